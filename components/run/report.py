"""The run's report from its files alone: cell records, held-out diagnostics, stage-0 info
(what `--eval-only` runs); rendering is `components.eval.report`."""

from __future__ import annotations


from components.config import Config
from components.errors import InputError
from components.eval.report import write_anytime_outputs
from components.io import read_json, read_jsonl
from components.methods.registry import method_summary
from components.run.run_dir import RunDir


def diagnostics_table(run: RunDir, names: list[str]) -> dict:
    records = sorted(read_jsonl(run.metrics("stages.jsonl")), key=lambda r: r["stage"])
    keys = list(records[0]["domains"][names[0]].keys()) if records else []
    out = {}
    for k in keys:
        out[f"held-out {k}"] = {
            "rows": [r["row"] for r in records], "columns": names,
            "values": [[r["domains"][n][k] for n in names] for r in records],
            "note": ("mean MLM cross-entropy on each domain's held-out blocks (same masks every stage)"
                     if k == "mlm_loss" else "anchor-vector R^2 of the bulk log-partition (docs/methods.md)"),
        }
    return out


def precision_summary(run: RunDir) -> str:
    """The precision actually used: pre-training from the per-step records, cells from theirs."""
    mdir = run.metrics("")
    steps = [r for p in sorted(mdir.glob("pretrain_stage*.jsonl")) for r in read_jsonl(p)[:1]] if mdir.is_dir() else []
    cells = {read_json(p).get("precision", "fp32") for p in (run.root / "cells").glob("*.json")}
    pre = sorted({"bf16" if s.get("bf16") else "fp32" for s in steps}) or ["n/a"]
    return f"pre-training {'/'.join(pre)}, fine-tuning cells {'/'.join(sorted(cells)) or 'n/a'}"


def stage0_summary(base: dict) -> str:
    """How the stage-0 model was made (base.json), in one line."""
    if base.get("stage0") == "rewarm":
        first, last = base["heldout_first"], base["heldout_last"]
        return (f"whole-model MLM re-warm on general text, {base['steps']} steps (stopped by {base['stopped']}; "
                f"held-out loss {first['mlm_loss']:.2f} -> {last['mlm_loss']:.2f}, top-1 {last['top1']:.3f}; "
                f"weights sha256 {base['sha256'][:12]}, {'shipped' if base['source'] != 'trained' else 'trained here'})")
    if base.get("head_warmup"):
        return (f"MLM head warmed up {base.get('steps')} steps on general text, encoder frozen (loss "
                f"{base.get('loss_first', 0):.2f} -> {base.get('loss_last', 0):.2f})")
    return "the model as shipped, with its own MLM head"


def write_report(cfg: Config, run: RunDir) -> dict:
    """Metrics and report from the cell files alone (what `--eval-only` runs)."""
    names = [d.name for d in cfg.domains]
    cells = [read_json(p) for p in sorted((run.root / "cells").glob("*.json"))]
    if not cells:
        raise InputError(f"{run.root}: no cell results to report (cells/ is empty)")
    base = read_json(run.base_info) if run.base_info.is_file() else {}
    summary = {
        "config": cfg.name, "method": cfg.methods.name, "model": cfg.model.name, "domains": " -> ".join(names),
        "seeds": cfg.finetune.seeds, "pretrain": f"{cfg.pretrain.max_steps} steps x {cfg.pretrain.batch_size} "
        f"x {cfg.model.block_size} tokens, lr {cfg.pretrain.lr}, {cfg.pretrain.num_workers} worker(s)",
        "finetune": f"{cfg.finetune.epochs} epochs, max {cfg.finetune.max_train_examples or 'all'} train / "
        f"{cfg.finetune.max_eval_examples or 'all'} dev / {cfg.finetune.max_test_examples or 'all'} test examples, "
        f"lr {cfg.finetune.lr}",
        "linear probes": (f"on, at most {cfg.eval.probe_max_examples or 'all'} examples per split" if cfg.eval.probe
                          else "off"),
        **method_summary(cfg),
        "precision": precision_summary(run),
        "stage 0": stage0_summary(base),
    }
    probes = [read_json(p) for p in sorted((run.root / "probes").glob("*.json"))] if cfg.eval.probe else []
    return write_anytime_outputs(run.root, names, cells, cfg.finetune.seeds, summary, diagnostics_table(run, names),
                                 probes=[p for p in probes if p["task"] in names] or None)
