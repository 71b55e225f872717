"""The shipped laptop domain as a Hugging Face dataset folder (save_to_disk), for task-from-HF tests."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from components.config import REPO_ROOT
from components.data.domains import _hf_task_cache

LAPTOP = REPO_ROOT / "data/laptop"
NAMES = json.loads((LAPTOP / "labels.json").read_text())


def _rows(split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (LAPTOP / f"{split}.jsonl").read_text().splitlines()[:n]]


def laptop_as_hf(out: Path, n: int = 60, mutate=None) -> Path:
    """data/laptop's task as a DatasetDict (train/validation/test) with a `sentence` column and
    ClassLabel integer labels, written with save_to_disk."""
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    splits = {}
    for ours, theirs in (("train", "train"), ("dev", "validation"), ("test", "test")):
        rows = _rows(ours, n)
        columns = {"sentence": [r["text"] for r in rows], "label": [NAMES.index(r["label"]) for r in rows]}
        if mutate:
            columns = mutate(theirs, columns)
        splits[theirs] = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    _hf_task_cache.clear()
    return out


def hf_domain(folder: Path, **task) -> str:
    spec = {"hf_dataset": str(folder), "splits": {"train": "train", "dev": "validation", "test": "test"},
            "columns": {"text": "sentence", "text_b": None, "label": "label"}, **task}
    return "domains=[{name: laptop, corpus: data/laptop/corpus.parquet, task: " + json.dumps(spec) + "}]"
