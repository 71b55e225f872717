"""The main job: continual pre-training over the configured domains with anytime fine-tuning
evaluation after every stage.

    python pipelines/continual.py --config pipelines/configs/default.yaml --run-dir runs/default
    ray job submit --working-dir . --runtime-env ray_runtime_env.yaml -- python pipelines/continual.py \\
        --config ... --run-dir /abs/dir --set data.cache_dir=/abs/cache   # absolute: see components/cli.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

from components.cli import add_config_args, config_from_args, print_config, run_main  # noqa: E402
from components.errors import InputError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--run-dir", type=Path, help="where every output of the run goes (absolute or "
                        "relative to the current directory; absolute under `ray job submit`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and every data file, print the plan, train nothing")
    parser.add_argument("--eval-only", action="store_true",
                        help="recompute metrics and report from the cell files in --run-dir")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.expanduser().resolve() if args.run_dir else None
    cfg = config_from_args(args, fallback=run_dir / "config.yaml" if run_dir else None)
    if args.print_config:
        print_config(cfg)
        return 0

    from components.lock import hold
    from components.run.execute import Pipeline
    from components.run.plan import prepare
    from components.run.report import write_report
    from components.run.run_dir import RunDir, check_same_run

    if run_dir is not None and not args.dry_run:
        hold(run_dir)  # one pipeline per run directory; before any work
    if args.eval_only:
        if run_dir is None:
            raise InputError("--eval-only needs --run-dir")
        check_same_run(RunDir(run_dir), cfg)  # another config would report the wrong domains or seeds
        anytime = write_report(cfg, RunDir(run_dir))
        print(f"report rewritten: {run_dir / 'report.md'}; A_all {anytime['metrics']['accuracy']['A_all']}")
        return 0
    plan = prepare(cfg)
    print(plan.describe(cfg), flush=True)
    if args.dry_run:
        print("dry run: config and data are valid; nothing trained")
        return 0
    if run_dir is None:
        raise InputError("--run-dir is required to train")
    anytime = Pipeline(cfg, run_dir, plan).execute()
    m = anytime["metrics"]["accuracy"]
    print("\nanytime accuracy matrix (rows: after stage; columns: task)")
    width = max(len(r) for r in anytime["rows"])
    print(" " * width + "  " + "  ".join(f"{d[:10]:>10}" for d in anytime["domains"]))
    for row, values in zip(anytime["rows"], anytime["accuracy"]):
        print(f"{row:>{width}}  " + "  ".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in values))
    print("metrics (accuracy): " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in m.items()))
    for name in ("anytime.json", "anytime.csv", "anytime_heatmap.png", "report.md", "plots/"):
        print(f"  {run_dir / name}")
    return 0


if __name__ == "__main__":
    run_main(main)
