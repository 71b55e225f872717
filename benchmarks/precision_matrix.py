"""bf16 against fp32 on whole runs: the anytime matrices paired by seed (issue #16, item 2).

For each seed s and precision p in (fp32, bf16), the whole pipeline (stage 0 .. N, cells,
probes) with `seed=s`, `finetune.seeds=[s]`, `pretrain.precision=p`, `finetune.precision=p`
into OUT/<p>/seed<s>/ (resumable: a run with anytime.json is skipped; --archive copies its
small files to ARCHIVE/<p>/seed<s>/). Then, per score and metric,

    d_s = metric(bf16 run, seed s) - metric(fp32 run, seed s),   mean(d) +/- t_{0.975,n-1} sd(d)/sqrt(n)

beside the noise floor of that metric: the seed-to-seed standard deviation of the fp32 runs.
bf16 is "equal within noise" for a metric when the whole 95% interval of d lies inside
(-sd, +sd) (an equivalence test: |mean(d)| + half-width < sd). Also the largest |cell
difference| of the seed-mean matrices and each run's wall time (bf16 / fp32 ratio of the means).
The last line is one JSON object.

    python benchmarks/precision_matrix.py --config pipelines/configs/default.yaml --seeds 0,1,2 \\
        --out-dir runs/precision --archive benchmarks/results/default_precision
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import numpy as np  # noqa: E402

from benchmarks.anytime_results import archive_run, parse_list, run_one  # noqa: E402
from components.cli import add_config_args, check_job_paths, run_main  # noqa: E402
from components.config import Config, load_config  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.eval.results_table import available_scores, paired_difference, run_matrix, run_metrics  # noqa: E402
from components.io import atomic_write_json  # noqa: E402

PRECISIONS = ("fp32", "bf16")
METRICS = ("A_all", "A_seen", "A_final", "BWT", "FWT")


def run_config(args: argparse.Namespace, precision: str, seed: int) -> Config:
    return load_config(args.config, [*args.overrides, f"pretrain.precision={precision}",
                                     f"finetune.precision={precision}", f"seed={seed}", f"finetune.seeds=[{seed}]"])


def compare(runs: dict[str, dict[int, dict]], walls: dict[str, dict[int, float]], seeds: list[int]) -> dict:
    """The paired bf16 - fp32 comparison of finished runs ({precision: {seed: anytime.json}})."""
    scores = [s for s in available_scores({p: runs[p] for p in PRECISIONS}) if s in ("accuracy", "probe_accuracy")]
    out: dict = {"seeds": seeds, "scores": {}}
    for score in scores:
        metrics = {p: {s: run_metrics(runs[p][s], score) for s in seeds} for p in PRECISIONS}
        table = {}
        for name in METRICS:
            diff = paired_difference({s: metrics["bf16"][s][name] for s in seeds},
                                     {s: metrics["fp32"][s][name] for s in seeds})
            fp32 = [metrics["fp32"][s][name] for s in seeds if metrics["fp32"][s][name] is not None]
            floor = float(np.std(fp32, ddof=1)) if len(fp32) > 1 else None
            within = None if diff["ci95"] is None or floor is None else bool(abs(diff["mean"]) + diff["ci95"] < floor)
            table[name] = {"bf16_minus_fp32": diff, "fp32_seed_sd": floor, "within_noise": within}
        mean = {p: np.nanmean([run_matrix(runs[p][s], score) for s in seeds], axis=0) for p in PRECISIONS}
        out["scores"][score] = {"metrics": table,
                                "max_abs_cell_difference": float(np.nanmax(np.abs(mean["bf16"] - mean["fp32"])))}
    wall = {p: float(np.mean([walls[p][s] for s in seeds if s in walls[p]])) for p in PRECISIONS if walls[p]}
    out["wall_s"] = {p: {str(s): w for s, w in walls[p].items()} for p in PRECISIONS}
    out["wall_mean_s"] = wall
    out["ratio_wall_bf16_over_fp32"] = wall["bf16"] / wall["fp32"] if len(wall) == 2 else None
    return out


def markdown(result: dict) -> str:
    def pm(d: dict) -> str:
        return "n/a" if d["mean"] is None else f"{d['mean']:+.4f} ± {d['ci95']:.4f}" if d["ci95"] else f"{d['mean']:+.4f}"

    lines = []
    for score, r in result["scores"].items():
        lines += [f"**{score}** (largest |cell difference| of the seed-mean matrices: "
                  f"{r['max_abs_cell_difference']:.4f})", "",
                  "| metric | bf16 - fp32 (paired, 95% t) | fp32 seed sd | within noise |", "|---|---|---|---|"]
        for name, m in r["metrics"].items():
            sd = "n/a" if m["fp32_seed_sd"] is None else f"{m['fp32_seed_sd']:.4f}"
            lines.append(f"| {name} | {pm(m['bf16_minus_fp32'])} | {sd} | {m['within_noise']} |")
        lines.append("")
    walls = ", ".join(f"{p} {w:.0f} s" for p, w in result["wall_mean_s"].items())
    ratio = result["ratio_wall_bf16_over_fp32"]
    lines.append(f"Mean wall time per run: {walls}" + (f" (bf16 / fp32 = {ratio:.2f})" if ratio else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each is a whole run per precision")
    parser.add_argument("--out-dir", type=Path, required=True, help="OUT/<precision>/seed<s>/ plus precision.*")
    parser.add_argument("--archive", type=Path, default=None, help="copy each finished run's small files here")
    args = parser.parse_args(argv)
    if not args.config:
        raise InputError("no config given: pass --config FILE (e.g. pipelines/configs/default.yaml)")
    check_job_paths(args.out_dir, args.config, args.overrides)
    seeds = parse_list(args.seeds, "seeds", int)
    if len(seeds) < 2:
        raise InputError("--seeds: give at least 2 seeds (the comparison is paired over seeds)")
    out = args.out_dir.expanduser().resolve()
    archive = args.archive.expanduser().resolve() if args.archive else None
    cfgs = {(p, s): run_config(args, p, s) for p in PRECISIONS for s in seeds}  # every config valid up front
    from components.run.plan import prepare

    prepare(cfgs[(PRECISIONS[0], seeds[0])])
    for s in seeds:  # seed-major: a stopped study leaves both precisions with as many seeds
        for p in PRECISIONS:
            run_dir = out / p / f"seed{s}"
            if not (run_dir / "anytime.json").is_file():
                print(f"\n=== {p} seed {s} -> {run_dir}", flush=True)
                print(f"=== {p} seed {s}: done in {run_one(cfgs[(p, s)], run_dir):.0f}s", flush=True)
            if archive:
                archive_run(run_dir, archive / p / f"seed{s}")
    read = lambda p, s, name: json.loads((out / p / f"seed{s}" / name).read_text())  # noqa: E731
    runs = {p: {s: read(p, s, "anytime.json") for s in seeds} for p in PRECISIONS}
    walls = {p: {s: read(p, s, "wall_time.json")["wall_s"] for s in seeds
                 if (out / p / f"seed{s}" / "wall_time.json").is_file()} for p in PRECISIONS}
    result = compare(runs, walls, seeds)
    for dest in filter(None, (out, archive)):
        atomic_write_json(dest / "precision.json", result)
        (dest / "precision.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_main(main)
