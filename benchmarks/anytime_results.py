"""Results on the real benchmark: every method against its baselines, over independent seeds.

For each method preset (pipelines/configs/methods/<name>.yaml) and each seed, runs the whole
pipeline in-process (stage 0 .. N, anytime cells) with `seed=<s>` and `finetune.seeds=[<s>]`
into OUT/<method>/seed<s>/; a run whose anytime.json exists is skipped, an unfinished one
resumes. Then writes OUT/results.md, OUT/results.json and OUT/heatmaps.png (ncl and full
accuracy matrices). The `base` row (no pre-training) comes from row 0 of the ncl runs, and every
method is paired against ncl on the same seed (--reference picks another method for both).

    python benchmarks/anytime_results.py --config pipelines/configs/anytime6.yaml \\
        --methods ncl,hprompt,uegp,moegp,coca,repcali,full --seeds 0,1,2 --out-dir runs/results6

Method presets are merged after every --config file; --set overrides apply after the preset
(to every method), then the seed. --report-only rebuilds the tables from the runs that exist.
--archive DIR copies each finished run's small files (anytime.json, wall_time.json, config.yaml,
manifest.json, the cell records cells/*.json) to DIR/<method>/seed<s>/, a layout --out-dir accepts: commit DIR and the table can
be rebuilt (and the remaining runs added) on another machine without the multi-GB run dirs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

from components.cli import add_config_args, check_job_paths, print_config, run_main  # noqa: E402
from components.config import REPO_ROOT, Config, load_config  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.eval.matrix import ALL_SCORES  # noqa: E402
from components.eval.plots import anytime_heatmaps_png  # noqa: E402
from components.eval.results_table import (BASE, REFERENCE, available_scores, build_results, load_cells,  # noqa: E402
                                           load_runs, results_markdown)
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

PRESETS = REPO_ROOT / "pipelines" / "configs" / "methods"
HEATMAP_METHODS = ("ncl", "full")
ARCHIVED = ("anytime.json", "wall_time.json", "config.yaml", "manifest.json")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_line() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu_model()}, {os.cpu_count()} cores; GPU: {gpu}"


def preset(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if name == BASE:
        raise InputError(f"--methods: '{BASE}' is not a preset; its row comes from row 0 of the {REFERENCE} runs")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise InputError(f"--methods: no preset '{name}' (known: {known})")
    return path


def run_config(args: argparse.Namespace, method: str, seed: int) -> Config:
    return load_config([*args.config, preset(method)], [*args.overrides, f"seed={seed}", f"finetune.seeds=[{seed}]"])


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--{what}: expected a comma-separated list, got {text!r}") from None
    if not items or len(set(items)) != len(items):
        raise InputError(f"--{what}: give a non-empty list without duplicates, got {text!r}")
    return items


def run_one(cfg: Config, run_dir: Path) -> float:
    from components.run.execute import Pipeline
    from components.run.plan import prepare

    t0 = time.time()
    Pipeline(cfg, run_dir, prepare(cfg)).execute()
    wall = time.time() - t0
    (run_dir / "error.txt").unlink(missing_ok=True)  # left by an earlier failed attempt
    atomic_write_json(run_dir / "wall_time.json", {"wall_s": wall, "finished": datetime.now(timezone.utc).isoformat()})
    return wall


def archive_run(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's ``ARCHIVED`` files and its cell records (cells/*.json, read by the
    collapse guard) to ``dest`` (anytime.json last: it marks the copy complete)."""
    for cell in sorted((run_dir / "cells").glob("*.json")):
        atomic_write_bytes(dest / "cells" / cell.name, cell.read_bytes())
    for name in sorted(ARCHIVED, key=lambda n: n == "anytime.json"):
        if (run_dir / name).is_file():
            atomic_write_bytes(dest / name, (run_dir / name).read_bytes())


def pending_runs(out: Path, methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(method, seed) pairs without an anytime.json, seed-major: a sweep stopped part-way leaves
    every method with the same number of finished seeds (or one fewer)."""
    return [(m, s) for s in seeds for m in methods if not (out / m / f"seed{s}" / "anytime.json").is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--methods", default="ncl,hprompt,uegp,moegp,coca,repcali,full",
                        help="comma-separated method presets (pipelines/configs/methods/*.yaml); ncl is the default --reference")
    parser.add_argument("--reference", default=None,
                        help="the method every other is paired against, and whose row 0 is the base row "
                             f"(default {REFERENCE}; e.g. --reference hprompt_ftprompts --methods hprompt_ftprompts,hprompt "
                             "pairs an ablation with its default on the same seeds)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each is a whole independent run")
    parser.add_argument("--out-dir", type=Path, required=True, help="OUT/<method>/seed<s>/ plus results.*")
    parser.add_argument("--label", default="", help="free text recorded in the header (e.g. 'cpu-reduced')")
    parser.add_argument("--archive", type=Path, default=None,
                        help="copy each finished run's anytime.json, wall time and config to ARCHIVE/<method>/seed<s>/")
    parser.add_argument("--report-only", action="store_true", help="train nothing; tabulate the runs in --out-dir")
    parser.add_argument("--score", action="append", default=None, choices=ALL_SCORES,
                        help="tabulate only this score (repeatable; default: accuracy, macro_f1 and, when every "
                             "run has them, probe_accuracy, probe_macro_f1)")
    args = parser.parse_args(argv)
    if not args.config:
        raise InputError("no config given: pass --config FILE (e.g. pipelines/configs/anytime6.yaml)")
    check_job_paths(args.out_dir, args.config, args.overrides)  # relative outputs are lost under `ray job submit`
    methods = parse_list(args.methods, "methods")
    if args.reference is not None and args.reference not in methods:
        raise InputError(f"--reference: '{args.reference}' is not among --methods ({', '.join(methods)})")
    reference = args.reference or REFERENCE  # the default may be absent: then no base row and no pairing
    seeds = parse_list(args.seeds, "seeds", int)
    out = args.out_dir.expanduser().resolve()
    archive = args.archive.expanduser().resolve() if args.archive else None
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    t_start = time.time()

    cfgs = {(m, s): run_config(args, m, s) for m in methods for s in seeds}  # every config is valid up front
    if args.print_config:
        print_config(cfgs[(methods[0], seeds[0])])
        return 0
    failed: dict[tuple[str, int], str] = {}
    if not args.report_only:
        from components.run.plan import prepare

        for m in methods:  # data, model and method checks before hours of training
            prepare(cfgs[(m, seeds[0])])
        todo = pending_runs(out, methods, seeds)
        if archive:
            for m, s in sorted(set(cfgs) - set(todo)):
                archive_run(out / m / f"seed{s}", archive / m / f"seed{s}")
        print(f"{len(methods) * len(seeds) - len(todo)} of {len(methods) * len(seeds)} runs already finished; "
              f"{len(todo)} to run", flush=True)
        for k, (m, s) in enumerate(todo, 1):
            run_dir = out / m / f"seed{s}"
            print(f"\n=== run {k}/{len(todo)}: method {m}, seed {s} -> {run_dir}", flush=True)
            try:
                wall = run_one(cfgs[(m, s)], run_dir)
                print(f"=== {m} seed {s}: done in {wall:.0f}s", flush=True)
                if archive:
                    archive_run(run_dir, archive / m / f"seed{s}")
            except InputError:
                raise
            except Exception:  # noqa: BLE001 - one failed run must not lose the others; it is reported
                (run_dir / "error.txt").parent.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc())
                failed[(m, s)] = f"failed in this invocation, see {m}/seed{s}/error.txt"
                print(f"=== {m} seed {s}: FAILED (traceback in {run_dir / 'error.txt'})", flush=True)

    runs = load_runs(out, methods, seeds)
    if args.score and not set(args.score) <= set(available_scores(runs)):
        raise InputError(f"--score {', '.join(args.score)}: not in every run's anytime.json "
                         f"(available: {', '.join(available_scores(runs))})")
    results = build_results(runs, seeds, reference=reference, cells=load_cells(out, methods, seeds),
                            scores_wanted=args.score)
    for item in results["missing"]:
        error = out / item["method"] / f"seed{item['seed']}" / "error.txt"
        item["reason"] = failed.get((item["method"], item["seed"])) or (
            f"failed earlier, see {item['method']}/seed{item['seed']}/error.txt" if error.is_file()
            else "not run or unfinished")
    run_walls = {f"{m}/seed{s}": json.loads(p.read_text())["wall_s"] for m in methods for s in seeds
                 if (p := out / m / f"seed{s}" / "wall_time.json").is_file()}
    heat_score = next(iter(results["scores"]))
    means = results["scores"][heat_score]["mean_matrix"]
    heat = {f"{m} ({means[m]['n']} seed{'s' if means[m]['n'] > 1 else ''})": means[m]["mean"]
            for m in HEATMAP_METHODS if m in means}
    if heat:
        import numpy as np

        atomic_write_bytes(out / "heatmaps.png", anytime_heatmaps_png(
            {f"{m}\n{heat_score}, mean over seeds": np.array(v, dtype=float) for m, v in heat.items()},
            results["domains"]))
    from components.run.run_dir import git_sha, versions

    v = versions()
    ref_cfg = cfgs[(methods[0], seeds[0])]
    wall = time.time() - t_start
    header = [
        ("label", args.label or "(none)"),
        ("command", f"`{command}`"),
        ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("hardware", hardware_line()),
        ("git sha", git_sha()),
        ("versions", f"ray {v['ray']}, torch {v['torch']}, transformers {v['transformers']}"),
        ("wall time (this invocation)", f"{wall / 3600:.2f} h ({wall:.0f} s)"),
        ("wall time (sum over runs, all invocations)", f"{sum(run_walls.values()) / 3600:.2f} h "
         f"({len(run_walls)} runs timed)"),
        ("budget", f"model {ref_cfg.model.name}; pre-train {ref_cfg.pretrain.max_steps} steps x "
         f"{ref_cfg.pretrain.batch_size} x {ref_cfg.model.block_size} tokens per stage; fine-tune "
         f"{ref_cfg.finetune.epochs} epochs, max {ref_cfg.finetune.max_train_examples or 'all'} train / "
         f"{ref_cfg.finetune.max_eval_examples or 'all'} eval examples per task"),
        ("methods x seeds", f"{', '.join(methods)} x {', '.join(map(str, seeds))}"),
    ]
    results["header"] = dict(header)
    results["run_wall_s"] = run_walls
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results, header, "heatmaps.png" if heat else None))
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'}" + (f", {out / 'heatmaps.png'}" if heat else ""))
    collapsed = {m: c["single_class"] for m, c in results["collapse"].items() if c["single_class"]}
    if collapsed:
        print("single-class cells (collapse guard): " + ", ".join(f"{m} {k}" for m, k in collapsed.items()))
    if results["missing"]:
        print("missing runs: " + ", ".join(f"{x['method']}/seed{x['seed']}" for x in results["missing"]))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
