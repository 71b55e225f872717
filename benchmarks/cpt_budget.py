"""Budget study: from what pre-training budget does continual pre-training beat the base model?

For each domain D (with its "other" task O) and seed s: one NCL pre-training stage on D from the
stage-0 model, run in-process for the largest budget with a schedule whose prefixes are valid
(warm-up of `--warmup-steps`, then a constant lr), so the checkpoint at step b IS the model a
b-step run would give. At every budget b (0 = the stage-0 model itself):

    probe       linear probe of the frozen model on D's task and on O's task (eval/probe.py)
    finetune    one anytime cell (fine-tuning, cell seed s) on D's task and on O's task
    heldout     MLM loss and top-1 on D's and O's held-out blocks

Gains over base are paired by seed: g_s(b) = score_s(b) - score_s(0), reported as mean +/- 95%
Student-t half-width over seeds, **sig** when the interval excludes 0.

    python benchmarks/cpt_budget.py --config pipelines/configs/default.yaml \\
        --domains restaurant:acl,acl:tweet,tweet:restaurant --budgets 0,50,200,800 --seeds 0,1,2 \\
        --out-dir runs/cpt_budget --archive benchmarks/results/cpt_budget

Resumable: a finished (domain, seed, budget) result file is never recomputed and an interrupted
stage resumes from its last budget checkpoint. `--archive DIR` copies every result file to
DIR/<domain>/seed<s>/b<steps>.json (a layout --out-dir accepts); `--report-only` rebuilds
budget.md / budget.json / budget.png from the result files. The last line printed is one JSON
object with the gains table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from components.checkpoint import load_module  # noqa: E402
from components.cli import add_config_args, config_from_args, run_main  # noqa: E402
from components.config import Config, load_config  # noqa: E402
from components.data.corpus_cache import load_corpus_blocks  # noqa: E402
from components.data.domains import resolve_domain  # noqa: E402
from components.data.masking import MlmMasker  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.run.cells import CellSpec, run_cell, run_probe_row  # noqa: E402
from components.eval.metrics import mean_ci95  # noqa: E402
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json  # noqa: E402
from components.methods.registry import build_pretrain_plugins  # noqa: E402
from components.models.head_warmup import prepare_base_model  # noqa: E402
from components.models.loading import load_tokenizer, masked_lm_from_state  # noqa: E402
from components.models.masked_lm import MaskedLM  # noqa: E402
from components.models.precision import resolve_precision  # noqa: E402
from components.models.rewarm import heldout_mlm  # noqa: E402
from components.pretrain.loop import LocalSession, StageSpec, run_stage  # noqa: E402
from components.pretrain.plugin import StageInfo, Tokens  # noqa: E402

KINDS = ("probe", "finetune")


class BudgetSession(LocalSession):
    """LocalSession that keeps only the checkpoints at the budgets (and the latest one for resume)."""

    def __init__(self, root: Path, keep: set[int]):
        super().__init__(root)
        self.keep = keep

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        super().report(metrics, checkpoint)
        for old in self.checkpoints[:-1]:
            if int(old.name.split("_")[-1]) not in self.keep and old.exists():
                shutil.rmtree(old)


def parse_pairs(text: str, names: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        own, _, other = item.strip().partition(":")
        for n in (own, other):
            if n not in names:
                raise InputError(f"--domains: '{n}' is not a configured domain ({', '.join(names)})")
        if own == other:
            raise InputError(f"--domains: '{item}': the other task must be another domain's")
        pairs.append((own, other))
    return pairs


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{what}: expected comma-separated integers, got '{text}'") from None
    if not vals or vals[0] < 0:
        raise InputError(f"{what}: expected non-negative integers, got '{text}'")
    return vals


def result_path(out: Path, domain: str, seed: int, budget: int) -> Path:
    return out / domain / f"seed{seed}" / f"b{budget}.json"


def checkpoint_weights(cfg: Config, base: dict, ckpt: Path) -> dict:
    """The state dict of a pre-training checkpoint (the model's architecture from the stage-0 weights)."""
    hf = masked_lm_from_state(cfg.model.name, base)
    load_module(hf, ckpt / "model.safetensors")
    return hf.state_dict()


def evaluate(cfg: Config, weights: dict, own: str, other: str, seed: int, heldout: dict, tokenizer,
             threads: int) -> dict:
    fp = "budget-study"
    probes = run_probe_row(cfg, 0, weights, None, None, fp, threads, tasks=[own, other])
    cells = {t: run_cell(cfg, CellSpec(0, t, seed, fp), weights, None, None, threads) for t in (own, other)}
    mlm = MaskedLM(masked_lm_from_state(cfg.model.name, weights))
    masker = MlmMasker.from_tokenizer(tokenizer, cfg.data.mask_prob)
    return {
        "probe": {p["task"]: {k: p[k] for k in ("accuracy", "macro_f1", "reg", "examples")} for p in probes},
        "finetune": {t: {k: c[k] for k in ("accuracy", "macro_f1", "best_dev", "test_predicted_counts", "examples",
                                          "wall_time_s")} for t, c in cells.items()},
        "heldout": {t: heldout_mlm(mlm, heldout[t], masker, tokenizer.pad_token_id) for t in (own, other)},
    }


def run_domain(cfg: Config, own: str, other: str, seed: int, budgets: list[int], args, tokenizer, base: dict,
               blocks: dict) -> None:
    todo = [b for b in budgets if not result_path(args.out_dir, own, seed, b).is_file()]
    if not todo:
        return
    steps = max(budgets)
    work = args.out_dir / own / f"seed{seed}" / "stage"
    heldout = {t: blocks[t].heldout[:args.heldout_blocks] for t in (own, other)}
    spec = None
    if steps > 0 and any(b > 0 for b in todo):
        total_warm = min(1.0, args.warmup_steps / steps)
        stage_cfg = load_config(args.config, [*args.overrides, f"seed={seed}", "pretrain.schedule=constant",
                                                  f"pretrain.warmup_ratio={total_warm}",
                                                  f"pretrain.checkpoint_every={min(b for b in budgets if b > 0)}",
                                                  f"pretrain.max_steps={steps}", "pretrain.log_every=1000000"])
        spec = StageSpec(config=stage_cfg, stage=StageInfo(index=1, domain=own, domains_seen=[own], domain_order=[own],
                                                           work_dir=Path(cfg.data.cache_dir)),
                         tokens=Tokens(len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id,
                                       list(tokenizer.all_special_ids)),
                         init_weights=base, train_blocks=blocks[own].train, total_steps=steps)
    for b in todo:
        t0 = time.time()
        if b == 0:
            weights = base
        else:
            ckpt = work / f"checkpoint_{b:08d}"
            if not ckpt.is_dir():
                print(f"[{own} seed {seed}] pre-training to step {b} of {steps} ...", flush=True)
                session = BudgetSession(work, keep=set(budgets))
                run_stage(replace(spec, stop_at=b), session, build_pretrain_plugins)
            weights = checkpoint_weights(cfg, base, ckpt)
        cfg_s = load_config(args.config, [*args.overrides, f"seed={seed}", f"finetune.seeds=[{seed}]"])
        record = {"domain": own, "other": other, "seed": seed, "budget_steps": b,
                  "tokens": b * cfg.pretrain.batch_size * cfg.model.block_size,
                  "precision": {"pretrain": resolve_precision(cfg.pretrain.precision, "cpu"),
                                "finetune": resolve_precision(cfg.finetune.precision, "cpu")},
                  **evaluate(cfg_s, weights, own, other, seed, heldout, tokenizer, args.threads),
                  "wall_time_s": round(time.time() - t0, 1)}
        path = result_path(args.out_dir, own, seed, b)
        atomic_write_json(path, record)
        if args.archive:
            atomic_write_json(result_path(args.archive, own, seed, b), record)
        print(f"[{own} seed {seed}] budget {b}: probe {own} {record['probe'][own]['accuracy']:.3f} "
              f"{other} {record['probe'][other]['accuracy']:.3f}; fine-tune {own} "
              f"{record['finetune'][own]['accuracy']:.3f} {other} {record['finetune'][other]['accuracy']:.3f}; "
              f"held-out loss {own} {record['heldout'][own]['mlm_loss']:.3f} ({record['wall_time_s']:.0f}s)", flush=True)


def gain_stats(g: list[float]) -> dict:
    """Paired gains over seeds -> mean, 95% Student-t half-width (None for one seed), sig."""
    mean, half = mean_ci95(g) if g else (None, None)
    return {"mean": mean, "ci95": half if len(g) > 1 else None, "sig": bool(len(g) > 1 and abs(mean) > half)}


def budget_points(records: list[dict]):
    """(domain, other, budget, seeds, by) for every budget > 0, `seeds` those with a budget-0 record
    to pair with, `by` the records keyed by (domain, seed, budget)."""
    by = {(r["domain"], r["seed"], r["budget_steps"]): r for r in records}
    for domain in sorted({r["domain"] for r in records}):
        other = next(r["other"] for r in records if r["domain"] == domain)
        for b in sorted({r["budget_steps"] for r in records if r["domain"] == domain and r["budget_steps"] > 0}):
            yield domain, other, b, [s for (d, s, bb) in by if d == domain and bb == b and (d, s, 0) in by], by


def gains_table(records: list[dict]) -> list[dict]:
    """Paired gains over budget 0 per (domain, budget, kind, own/other), mean +/- 95% over seeds."""
    rows = []
    for domain, other, b, seeds, by in budget_points(records):
        row = {"domain": domain, "other": other, "budget_steps": b, "n_seeds": len(seeds),
               "tokens": by[(domain, seeds[0], b)]["tokens"] if seeds else None}
        for kind in KINDS:
            for side, task in (("own", domain), ("other", other)):
                row[f"{kind}_{side}"] = gain_stats([by[(domain, s, b)][kind][task]["accuracy"]
                                                    - by[(domain, s, 0)][kind][task]["accuracy"] for s in seeds])
        rows.append(row)
    return rows


def _cell(v: dict) -> str:
    if v["mean"] is None:
        return "n/a"
    if v["ci95"] is None:
        return f"{v['mean']:+.4f} (1 seed)"
    return f"{v['mean']:+.4f} ± {v['ci95']:.4f}" + (" **sig**" if v["sig"] else " n.s.")


def report(out: Path, records: list[dict]) -> list[dict]:
    rows = gains_table(records)
    header = "| domain (other task) | steps | tokens | seeds | probe own | probe other | fine-tune own | fine-tune other |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['domain']} ({r['other']}) | {r['budget_steps']} | {r['tokens']:,} | {r['n_seeds']} | "
                     + " | ".join(_cell(r[f"{k}_{s}"]) for k in KINDS for s in ("own", "other")) + " |")
    base = {}
    for rec in records:
        if rec["budget_steps"] == 0:
            for kind in KINDS:
                base.setdefault((rec["domain"], kind), []).append(rec[kind][rec["domain"]]["accuracy"])
    base_lines = [f"- {d}: {k} accuracy at budget 0 = {np.mean(v):.4f} (n={len(v)})" for (d, k), v in sorted(base.items())]
    text = ("# Budget study: gain over the stage-0 model (accuracy), paired by seed\n\n"
            "Gain = score after b NCL steps on the domain - score of the stage-0 model, same seed; "
            "mean ± 95% Student-t half-width over seeds, **sig** when the interval excludes 0.\n\n"
            + "\n".join(lines) + "\n\nStage-0 scores:\n\n" + "\n".join(base_lines) + "\n")
    atomic_write_text(out / "budget.md", text)
    atomic_write_json(out / "budget.json", {"gains": rows, "records": len(records)})
    atomic_write_bytes(out / "budget.png", _plot(rows))
    return rows


def _plot(rows: list[dict]) -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2, squeeze=False)
    for i, kind in enumerate(KINDS):
        for j, side in enumerate(("own", "other")):
            ax = axes[i][j]
            for domain in sorted({r["domain"] for r in rows}):
                pts = [r for r in rows if r["domain"] == domain and r[f"{kind}_{side}"]["mean"] is not None]
                if not pts:
                    continue
                x = [r["tokens"] for r in pts]
                y = np.array([r[f"{kind}_{side}"]["mean"] for r in pts])
                h = np.array([r[f"{kind}_{side}"]["ci95"] or 0.0 for r in pts])
                ax.plot(x, y, marker="o", label=domain)
                ax.fill_between(x, y - h, y + h, alpha=0.2)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("pre-training tokens on the domain")
            ax.set_ylabel("accuracy gain over stage 0")
            ax.set_title(f"{'linear probe' if kind == 'probe' else 'fine-tuning'}, {side} task", fontsize=10)
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def load_records(out: Path) -> list[dict]:
    return [read_json(p) for p in sorted(out.glob("*/seed*/b*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--domains", default="restaurant:acl,acl:tweet,tweet:restaurant",
                        help="own:other pairs (the other task is scored too)")
    parser.add_argument("--budgets", default="0,50,200,800", help="pre-training steps (0 = stage-0 model)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--heldout-blocks", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--archive", type=Path, help="copy every result file here (commit it)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if cfg.model.stage0 == "head_warmup":
        print("note: stage 0 is the head-only warm-up (model.stage0=head_warmup)", flush=True)
    names = [d.name for d in cfg.domains]
    pairs = parse_pairs(args.domains, names)
    budgets, seeds = parse_ints(args.budgets, "--budgets"), parse_ints(args.seeds, "--seeds")
    if 0 not in budgets:
        raise InputError("--budgets must include 0 (the stage-0 model every gain is measured against)")
    if args.archive and args.archive.is_dir() and not args.report_only:
        for p in args.archive.glob("*/seed*/b*.json"):  # continue from what an earlier machine archived
            dest = args.out_dir / p.relative_to(args.archive)
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dest)
    if not args.report_only:
        torch.set_num_threads(args.threads)
        tokenizer = load_tokenizer(cfg.model.name)
        path, info = prepare_base_model(cfg.model, tokenizer, Path(cfg.data.cache_dir), cfg.seed)
        base = load_file(str(path))
        print(f"stage 0: {info.get('stage0')} ({'cache' if info.get('cache_hit') else info.get('source', 'made now')})",
              flush=True)
        domains = {d.name: d for d in cfg.domains}
        blocks = {n: load_corpus_blocks(resolve_domain(domains[n]), tokenizer, cfg.model.block_size, cfg.data.cache_dir,
                                        cfg.data.heldout_fraction, cfg.data.max_corpus_docs, cfg.data.max_doc_chars)
                  for n in {n for p in pairs for n in p}}
        for own, other in pairs:
            for seed in seeds:
                run_domain(cfg, own, other, seed, budgets, args, tokenizer, base, blocks)
                rows = report(args.out_dir, load_records(args.out_dir))
                if args.archive:
                    for name in ("budget.md", "budget.json", "budget.png"):
                        shutil.copy(args.out_dir / name, args.archive / name)
    rows = report(args.out_dir, load_records(args.out_dir))
    print((args.out_dir / "budget.md").read_text())
    print(json.dumps({"gains": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
