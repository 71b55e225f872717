"""Re-run one anytime cell of a finished run under config variants: which part of a method
makes a cell fail?

Loads stage `--stage` of `--run-dir` (its `model.safetensors`, its pre-training plug-in state,
the stage-0 weights) with the run's own resolved `config.yaml`, then fine-tunes on `--task`
once per `--variant`, in this process, with the cell's seed and example subsets (the same
`run_cell` the pipeline's Ray tasks call; the variant "as run" reproduces the run's cell).
A variant is `LABEL` alone (the run's config) or `LABEL: KEY=VALUE KEY=VALUE ...` (dotted
overrides on top of it). Per variant it prints test accuracy, macro-F1, the test majority
rate, the predicted-class counts on test and the dev accuracy at each evaluation.

    python benchmarks/cell_ablation.py --run-dir RUN --stage 1 --task acl \\
        --variant 'as run' --variant 'no consistency: finetune.coca.beta=0' \\
        --variant 'no prompts: methods.hprompt.enabled=false'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

from safetensors.torch import load_file  # noqa: E402

from components.checkpoint import load_tree  # noqa: E402
from components.cli import run_main  # noqa: E402
from components.config import load_config  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.run.cells import CellSpec, run_cell  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'LABEL: k=v k=v' -> (LABEL, [k=v, k=v]); 'LABEL' -> (LABEL, [])."""
    label, _, rest = text.partition(":")
    overrides = rest.split()
    bad = [o for o in overrides if "=" not in o]
    if not label.strip() or bad:
        raise InputError(f"--variant {text!r}: expected 'LABEL' or 'LABEL: KEY=VALUE ...'")
    return label.strip(), overrides


def stage_dir(run_dir: Path, stage: int) -> Path:
    found = sorted((run_dir / "stages").glob(f"{stage:02d}-*"))
    if not found or not (found[0] / "model.safetensors").is_file():
        raise InputError(f"--stage {stage}: no finished stage checkpoint {run_dir}/stages/{stage:02d}-*/model.safetensors")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--stage", type=int, required=True, help="row of the matrix (0 = base)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", action="append", required=True, help="'LABEL' or 'LABEL: KEY=VALUE ...'")
    parser.add_argument("--seed", type=int, default=None, help="cell seed (default: the run's first)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise InputError(f"--run-dir {args.run_dir}: no config.yaml (not a run directory)")
    variants = [parse_variant(v) for v in args.variant]
    configs = [(label, load_config([config], overrides)) for label, overrides in variants]  # all checked first
    names = [d.name for d in configs[0][1].domains]
    if args.task not in names:
        raise InputError(f"--task {args.task!r}: the run's domains are {names}")
    stage, base = stage_dir(args.run_dir, args.stage), stage_dir(args.run_dir, 0)
    weights, base_weights = load_file(str(stage / "model.safetensors")), load_file(str(base / "model.safetensors"))
    plugin_state = load_tree(stage, "plugins") if (stage / "plugins.safetensors").is_file() else None
    for label, cfg in configs:
        seed = cfg.finetune.seeds[0] if args.seed is None else args.seed
        r = run_cell(cfg, CellSpec(args.stage, args.task, seed, "ablation"), weights, base_weights, plugin_state,
                     args.threads)
        counts = r["test_label_counts"]
        print(json.dumps({
            "variant": label, "stage": args.stage, "task": args.task, "seed": seed,
            "accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
            "test_majority": round(max(counts) / sum(counts), 4) if counts else None,
            "predicted": None if counts is None else
            {n: c for n, c in zip(r["label_names"], r["test_predicted_counts"]) if c},
            "dev_accuracy": [round(p["accuracy"], 3) for p in r["dev_curve"]],
            "wall_time_s": r["wall_time_s"],
        }), flush=True)


if __name__ == "__main__":
    run_main(main)
