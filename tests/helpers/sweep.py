"""A toy domain and tiny-budget config for real sweeps, and space files."""

from __future__ import annotations

import json
import random
from pathlib import Path

from components.config import REPO_ROOT

GOOD = ["good", "great", "lovely", "excellent", "fine", "nice"]
BAD = ["bad", "awful", "terrible", "poor", "horrible", "nasty"]


def toy_domain(root: Path) -> Path:
    """A task a fine-tuned MiniLM learns in a few steps (the polarity word decides the label),
    so a trial whose head cannot learn is the worst by construction."""
    rng = random.Random(0)
    d = root / "toy"
    d.mkdir()
    nouns = ["film", "meal", "phone", "book", "hotel", "song", "game", "chair"]
    (d / "corpus.txt").write_text("\n".join(f"the {rng.choice(nouns)} was {rng.choice(GOOD + BAD)} and "
                                            f"the {rng.choice(nouns)} was {rng.choice(GOOD + BAD)}" for _ in range(300)))
    for split, n in (("train", 48), ("dev", 24), ("test", 48)):
        rows = []
        for i in range(n):
            label = "positive" if i % 2 else "negative"
            word = rng.choice(GOOD if label == "positive" else BAD)
            rows.append(json.dumps({"text": f"the {rng.choice(nouns)} was really {word}", "label": label}))
        (d / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (d / "labels.json").write_text('["negative", "positive"]')
    return d


def sweep_config(tmp_path: Path, cache: Path):
    domain = toy_domain(tmp_path)
    return [REPO_ROOT / "pipelines/configs/default.yaml"], [
        f"domains=[{{name: toy, path: {domain}}}]", f"data.cache_dir={cache}", "model.block_size=32",
        "model.head_warmup.steps=3", "pretrain.max_steps=2", "pretrain.cpus_per_worker=1", "pretrain.batch_size=8",
        "pretrain.eval_blocks=4", "pretrain.end_stage_blocks=4", "eval.anchor_positions=40",
        "finetune.epochs=3", "finetune.batch_size=8", "finetune.max_length=24", "finetune.lr=1.0e-5",
        "sweep.reduction_factor=2", "sweep.grace_period=1", "tracking.wandb=disabled", "eval.probe_max_examples=40"]


def write_space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p
