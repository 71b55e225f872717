"""Noise floor of a one-seed method comparison: the base model fine-tuned on every task of a
config with several cell seeds (same example subsets, same budget as the anytime cells).

A method's anytime matrix differs from ncl's by the method *and* by fine-tuning noise; this
measures the second part alone. The model is the configured one as loaded, without the MLM-head
warm-up (which trains the head only, so plain [CLS] fine-tuning sees the same encoder). Prints
per task the accuracy of each seed, its mean and sample standard deviation s, and the implied
standard deviation of A_all for a single-seed run, s_A = sqrt(mean_j s_j^2 / n_tasks) (the rows i >= 1 share each task's noise, so we count one
independent draw per task: the conservative choice), and of a difference of two runs, sqrt(2) s_A.

    python benchmarks/finetune_noise.py --config pipelines/configs/default.yaml \\
        --set finetune.lr=3.0e-4 --set finetune.batch_size=8 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

from components.cli import add_config_args, print_config, run_main  # noqa: E402
from components.config import load_config  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.models.loading import load_masked_lm  # noqa: E402
from components.run.cells import CellSpec, run_cell  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated cell seeds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print_config(cfg)
        return
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise InputError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    hf, _ = load_masked_lm(cfg.model.name)
    weights = {k: v.clone() for k, v in hf.state_dict().items()}
    sds = []
    for d in cfg.domains:
        accs = [run_cell(cfg, CellSpec(0, d.name, s, "base"), weights, None, None, args.threads)["accuracy"]
                for s in seeds]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        sds.append(sd)
        print(f"{d.name}: accuracy {' '.join(f'{a:.3f}' for a in accs)} (seeds {args.seeds}); "
              f"mean {statistics.mean(accs):.3f}, sd {sd:.3f}", flush=True)
    s_a = math.sqrt(sum(s * s for s in sds) / len(sds) / len(sds))
    print(f"single-seed A_all: sd ~ {s_a:.4f}; difference of two single-seed runs: sd ~ {math.sqrt(2) * s_a:.4f} "
          f"(95% ~ +/- {1.96 * math.sqrt(2) * s_a:.4f})")


if __name__ == "__main__":
    run_main(main)
