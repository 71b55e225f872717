"""The real pipeline on tiny budgets (MiniLM, two shipped domains): overrides and the config."""

from __future__ import annotations

from pathlib import Path

from components.config import REPO_ROOT, load_config

TINY = [
    "domains=[{name: laptop, path: data/laptop}, {name: acl, path: data/acl}]",
    # head-only warm-up at stage 0: 6 tiny steps cannot move the shipped re-warmed model's held-out loss
    # (measured: laptop 4.70 -> 4.74 at lr 1e-4), but do move an MLM-incompetent one (the held-out test)
    "model.stage0=head_warmup", "model.block_size=32", "model.head_warmup.steps=3", "data.max_corpus_docs=300",
    "pretrain.num_workers=2", "pretrain.cpus_per_worker=1", "pretrain.batch_size=8", "pretrain.max_steps=6",
    "pretrain.lr=5.0e-4", "pretrain.checkpoint_every=2", "pretrain.log_every=2", "pretrain.eval_blocks=8",
    "pretrain.end_stage_blocks=8", "finetune.epochs=1", "finetune.batch_size=8", "finetune.max_length=48",
    "finetune.max_train_examples=24", "finetune.max_eval_examples=32", "finetune.max_test_examples=32",
    "eval.probe_max_examples=40", "eval.anchor_positions=60",
]


def tiny_config(cache: Path, extra: list[str] = ()):
    return load_config([REPO_ROOT / "pipelines/configs/default.yaml"], [*TINY, f"data.cache_dir={cache}", *extra])
