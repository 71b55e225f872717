"""Ray Tune sweep over config keys (CoCa weights, RepCali sizes, loss weights, ...) with the
anytime metrics as the objective.

    python pipelines/sweep.py --config pipelines/configs/default.yaml \\
        --space tune_spaces/coca_repcali.yaml --num-samples 8 --search random --scheduler asha \\
        --run-dir runs/sweep

Running the same command again after the driver died resumes the sweep: finished trials are
kept, the others run. Outputs: DIR/sweep.json (every trial) and DIR/best.yaml (a config for
pipelines/continual.py --config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

from components.cli import add_config_args, config_from_args, print_config, run_main  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.sweep.space import SEARCHERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--space", type=Path, required=True, help="search space YAML (tune_spaces/)")
    parser.add_argument("--num-samples", type=int, default=4, help="trials (x every grid combination)")
    parser.add_argument("--search", choices=SEARCHERS, default="random")
    parser.add_argument("--scheduler", choices=("asha", "none"), default="asha")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, the space, the searcher and every data file; run no trial")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        raise InputError("--num-samples must be >= 1")
    cfg = config_from_args(args)
    if args.print_config:
        print_config(cfg)
        return 0
    from components.lock import hold
    from components.sweep.runner import plan_sweep, run_sweep

    sweep_plan = plan_sweep(cfg, args.space, args.search)
    print(sweep_plan.describe(cfg, args.num_samples, args.scheduler), flush=True)
    if args.dry_run:
        print("dry run: config, space and data are valid; no trial run")
        return 0
    run_dir = args.run_dir.expanduser().resolve()
    hold(run_dir, "sweep directory")
    result = run_sweep(cfg, sweep_plan, run_dir, args.num_samples, args.scheduler)
    best = result["best"]
    print(f"best trial {best['trial_id']}: {cfg.sweep.metric} = {best['metrics']['objective']:.4f} "
          f"with {best['params']}")
    print(f"  {args.run_dir / 'sweep.json'}\n  {args.run_dir / 'best.yaml'}")
    return 0


if __name__ == "__main__":
    run_main(main)
