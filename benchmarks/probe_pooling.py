"""Which pooling lets a linear probe see continual pre-training? Re-probe the budget study's checkpoints.

The budget study (cpt_budget.py) probes e(x) = the [CLS] state, the slot the task head reads. The
default model is a sentence-embedding model trained with *mean* pooling, and MLM trains the token
states, not [CLS] directly. This script re-reads the study's checkpoints (its --out-dir keeps one per
budget) and probes each with every pooling in --poolings from ONE forward pass per example:

    cls   e(x) = h_0(x)                       mean   e(x) = sum_t m_t h_t(x) / sum_t m_t

on the domain's task and on its other task (eval/probe.py: standardised features, logistic
regression with C chosen on dev). Gains are paired by seed as in the study,
g_s(b) = probe_s(b) - probe_s(0) (the seed also picks the capped train subset), mean +/- 95%
Student-t half-width over seeds. The "cls" column reproduces the study's archived probe numbers (a
check that both read the same checkpoints and data).

    python benchmarks/probe_pooling.py --config pipelines/configs/default.yaml \\
        --set data.max_corpus_docs=null --study-dir runs/cpt_budget --out-dir runs/probe_pooling \\
        --archive benchmarks/results/probe_pooling

Resumable (one result file per (domain, seed, budget)); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from benchmarks.cpt_budget import _cell, budget_points, checkpoint_weights, gain_stats, parse_ints, parse_pairs  # noqa: E402
from components.cli import add_config_args, config_from_args, run_main  # noqa: E402
from components.config import load_config  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.eval.probe import fit_probe  # noqa: E402
from components.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from components.methods.registry import build_task_model  # noqa: E402
from components.models.head_warmup import prepare_base_model  # noqa: E402
from components.models.loading import load_tokenizer  # noqa: E402
from components.models.precision import autocast_for  # noqa: E402
from components.models.task_model import infer  # noqa: E402
from components.run.cells import task_data  # noqa: E402

POOLINGS = ("cls", "mean")


@torch.no_grad()
def pooled_features(model, data: dict[str, torch.Tensor], poolings: list[str], batch_size: int,
                    precision: str) -> dict[str, np.ndarray]:
    """{pooling: [n, d]} from one forward pass per batch (the TaskModel's own pooling code)."""
    model.eval()

    def pooled(b) -> torch.Tensor:  # [b, poolings, d]
        with autocast_for(torch.device("cpu"), precision):
            hidden = model.mlm.encode(model.mlm.embed(b.input_ids), b.attention_mask, None, b.token_type_ids)
        out = []
        for p in poolings:
            model.pooling = p
            out.append(model.pool(hidden, b).float())
        return torch.stack(out, 1)

    x = infer(pooled, data, batch_size).numpy()
    return {p: x[:, i] for i, p in enumerate(poolings)}


def probe_all(cfg, weights: dict, tasks: list[str], poolings: list[str], tokenizer) -> dict:
    """{pooling: {task: probe result}} for one model."""
    cap = cfg.eval.probe_max_examples
    result = {p: {} for p in poolings}
    for task in tasks:
        info, data, regression = task_data(cfg, task, tokenizer, {"train": cap, "dev": cap, "test": cap})
        model, _, _ = build_task_model(cfg, weights, info, tokenizer)
        feats = {s: pooled_features(model, d, poolings, 2 * cfg.finetune.batch_size, cfg.finetune.precision)
                 for s, d in data.items()}
        y = {s: d["labels"].numpy() for s, d in data.items()}
        for p in poolings:
            fit = fit_probe({s: f[p] for s, f in feats.items()}, y, regression)
            result[p][task] = {k: fit[k] for k in ("accuracy", "macro_f1", "reg")}
    return result


def gains(records: list[dict], poolings: list[str]) -> list[dict]:
    rows = []
    for domain, other, b, seeds, by in budget_points(records):
        for p in poolings:
            row = {"domain": domain, "other": other, "budget_steps": b, "pooling": p, "n_seeds": len(seeds)}
            for side, task in (("own", domain), ("other", other)):
                row[f"probe_{side}"] = gain_stats([by[(domain, s, b)]["probe"][p][task]["accuracy"]
                                                   - by[(domain, s, 0)]["probe"][p][task]["accuracy"] for s in seeds])
            rows.append(row)
    return rows


def report(out: Path, records: list[dict], poolings: list[str]) -> list[dict]:
    rows = gains(records, poolings)
    lines = ["| domain (other task) | steps | pooling | seeds | probe own | probe other |", "|" + "---|" * 6]
    lines += [f"| {r['domain']} ({r['other']}) | {r['budget_steps']} | {r['pooling']} | {r['n_seeds']} | "
              f"{_cell(r['probe_own'])} | {_cell(r['probe_other'])} |" for r in rows]
    base = []
    for p in poolings:
        for domain in sorted({r["domain"] for r in records}):
            v = [r["probe"][p][domain]["accuracy"] for r in records if r["domain"] == domain and r["budget_steps"] == 0]
            base.append(f"- {domain}, {p}: probe accuracy of the stage-0 model = {np.mean(v):.4f} (n={len(v)})")
    atomic_write_text(out / "pooling.md", "# Probe gain over the stage-0 model by pooling, paired by seed\n\n"
                      + "\n".join(lines) + "\n\nStage-0 probe scores:\n\n" + "\n".join(base) + "\n")
    atomic_write_json(out / "pooling.json", {"gains": rows, "records": len(records)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--domains", default="restaurant:acl,acl:tweet,tweet:restaurant")
    parser.add_argument("--budgets", default="0,200,800")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--poolings", default=",".join(POOLINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--study-dir", type=Path, required=True, help="cpt_budget.py --out-dir (its checkpoints)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--archive", type=Path, help="copy every result file here (commit it)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    pairs = parse_pairs(args.domains, [d.name for d in cfg.domains])
    budgets, seeds = parse_ints(args.budgets, "--budgets"), parse_ints(args.seeds, "--seeds")
    poolings = [p for p in args.poolings.split(",") if p]
    if not poolings or any(p not in POOLINGS for p in poolings):
        raise InputError(f"--poolings: choose from {', '.join(POOLINGS)}")
    if 0 not in budgets:
        raise InputError("--budgets must include 0 (the stage-0 model every gain is measured against)")
    missing = [f"{d}/seed{s}/stage/checkpoint_{b:08d}" for d, _ in pairs for s in seeds for b in budgets
               if b > 0 and not (args.study_dir / d / f"seed{s}" / "stage" / f"checkpoint_{b:08d}").is_dir()]
    if missing:
        raise InputError(f"--study-dir {args.study_dir}: no checkpoint {missing[0]} (and {len(missing) - 1} more)")
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(cfg.model.name)
    base = load_file(str(prepare_base_model(cfg.model, tokenizer, Path(cfg.data.cache_dir), cfg.seed)[0]))
    for own, other in pairs:
        for seed in seeds:
            for b in budgets:
                path = args.out_dir / own / f"seed{seed}" / f"b{b}.json"
                if not path.is_file():
                    t0 = time.time()
                    weights = base if b == 0 else checkpoint_weights(
                        cfg, base, args.study_dir / own / f"seed{seed}" / "stage" / f"checkpoint_{b:08d}")
                    cfg_s = load_config(args.config, [*args.overrides, f"seed={seed}"])
                    record = {"domain": own, "other": other, "seed": seed, "budget_steps": b,
                              "probe": probe_all(cfg_s, weights, [own, other], poolings, tokenizer),
                              "wall_time_s": round(time.time() - t0, 1)}
                    atomic_write_json(path, record)
                    print(f"[{own} seed {seed}] budget {b}: " + "; ".join(
                        f"{p} {own} {record['probe'][p][own]['accuracy']:.3f} {other} "
                        f"{record['probe'][p][other]['accuracy']:.3f}" for p in poolings)
                        + f" ({record['wall_time_s']:.0f}s)", flush=True)
                if args.archive:
                    dest = args.archive / path.relative_to(args.out_dir)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, dest)
            records = [read_json(p) for p in sorted(args.out_dir.glob("*/seed*/b*.json"))]
            report(args.out_dir, records, poolings)
            if args.archive:
                for name in ("pooling.md", "pooling.json"):
                    shutil.copy(args.out_dir / name, args.archive / name)
    rows = report(args.out_dir, [read_json(p) for p in sorted(args.out_dir.glob("*/seed*/b*.json"))], poolings)
    print((args.out_dir / "pooling.md").read_text())
    print(json.dumps({"gains": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
