"""The benchmark data shipped in data/ is complete and intact.

The expected counts below are data facts measured by data/build_from_shared.py
(and listed in data/README.md). If the data is rebuilt from a different source,
update both.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import REPO_ROOT

DATA = REPO_ROOT / "data"

DOMAINS = ("restaurant", "laptop", "acl", "ai", "biomed", "tweet")
FILES = ("corpus.parquet", "train.jsonl", "dev.jsonl", "test.jsonl", "labels.json")

# domain -> (corpus rows, train, dev, test)
EXPECTED_ROWS = {
    "restaurant": (9955, 3452, 150, 1120),
    "laptop": (4082, 2163, 150, 638),
    "acl": (18844, 1688, 114, 139),
    "ai": (11141, 3219, 455, 974),
    "biomed": (5784, 4169, 2427, 3469),
    "tweet": (98178, 3257, 374, 1421),
}
EXPECTED_GENERAL_ROWS = 31720
PAIR_DOMAINS = {"restaurant", "laptop"}  # text = aspect term, text_b = sentence
# labels of labels.json absent from a split (every label occurs in train)
EXPECTED_MISSING = {("biomed", "dev"): {"AGONIST-INHIBITOR"}, ("biomed", "test"): {"SUBSTRATE_PRODUCT-OF"}}
MAX_TOTAL_BYTES = 40_000_000
MAX_GENERAL_BYTES = 3_000_000


def _du_sb(path: Path) -> int:
    """Apparent size like `du -sb` (file sizes plus directory entries), ignoring __pycache__."""
    total = path.stat().st_size
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            total += (Path(root) / name).lstat().st_size
    return total


def _read_text_column(path: Path) -> list:
    table = pq.read_table(path)
    assert table.column_names == ["text"], f"{path}: columns {table.column_names}"
    assert pa.types.is_string(table.schema.field("text").type) or pa.types.is_large_string(
        table.schema.field("text").type
    )
    return table.column("text").to_pylist()


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_files_present(domain):
    for name in FILES:
        assert (DATA / domain / name).is_file(), f"missing data/{domain}/{name}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_corpus_parquet(domain):
    texts = _read_text_column(DATA / domain / "corpus.parquet")
    assert len(texts) == EXPECTED_ROWS[domain][0]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    assert not bad, f"{domain}: {len(bad)} null/empty corpus rows, first {bad[0]}"
    assert all("\n" not in t for t in texts), f"{domain}: corpus row contains a newline"


@pytest.mark.parametrize("domain", DOMAINS)
def test_labels_json(domain):
    labels = json.loads((DATA / domain / "labels.json").read_text(encoding="utf-8"))
    assert isinstance(labels, list) and labels
    assert all(isinstance(l, str) and l for l in labels)
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("domain", DOMAINS)
def test_task_jsonl(domain):
    labels = json.loads((DATA / domain / "labels.json").read_text(encoding="utf-8"))
    for split, expected in zip(("train", "dev", "test"), EXPECTED_ROWS[domain][1:]):
        path = DATA / domain / f"{split}.jsonl"
        seen = set()
        n = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                row = json.loads(line)
                where = f"{path.relative_to(DATA)}:{lineno}"
                assert isinstance(row.get("text"), str) and row["text"].strip(), where
                assert isinstance(row.get("label"), str), where
                assert row["label"] in labels, f"{where}: label {row['label']!r} not in labels.json"
                if domain in PAIR_DOMAINS:
                    assert isinstance(row.get("text_b"), str) and row["text_b"].strip(), where
                seen.add(row["label"])
                n += 1
        assert n == expected, f"{path.relative_to(DATA)}: {n} rows, expected {expected}"
        assert set(labels) - seen == EXPECTED_MISSING.get((domain, split), set()), (domain, split)


def test_general_corpus():
    path = DATA / "general" / "corpus.parquet"
    texts = _read_text_column(path)
    assert len(texts) == EXPECTED_GENERAL_ROWS
    assert all(isinstance(t, str) and len(t.split()) >= 4 for t in texts)
    assert len(set(texts)) == len(texts)
    assert _du_sb(DATA / "general") <= MAX_GENERAL_BYTES


STAGE0 = {f"stage0/minilm-l6-rewarm/{n}" for n in ("model.safetensors", "recipe.json", "comparison.json")}


def test_checksums():
    """Every built file matches data/SHA256SUMS (written by build_from_shared.py)."""
    lines = (DATA / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    listed = set()
    for line in lines:
        digest, rel = line.split("  ", 1)
        listed.add(rel)
        h = hashlib.sha256((DATA / rel).read_bytes()).hexdigest()
        assert h == digest, f"data/{rel}: checksum mismatch"
    expected = {f"{d}/{name}" for d in DOMAINS for name in FILES} | {"general/corpus.parquet"}
    assert listed == expected


def test_no_stray_files():
    """data/ holds only the shipped files (no leftovers such as *.tmp from an interrupted build)."""
    expected = {f"{d}/{name}" for d in DOMAINS for name in FILES} | {
        "general/corpus.parquet", "README.md", "SHA256SUMS", "build_from_shared.py", ".gitignore",
        *STAGE0,
    }
    found = set()
    for root, dirs, files in os.walk(DATA):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found |= {(Path(root) / f).relative_to(DATA).as_posix() for f in files}
    assert found == expected, f"unexpected: {sorted(found - expected)}, missing: {sorted(expected - found)}"


def test_readme_present():
    text = (DATA / "README.md").read_text(encoding="utf-8")
    for d in DOMAINS + ("general",):
        assert d in text


def test_total_size():
    """The benchmark data stays small; the stage-0 weights (data/stage0, ~45 MB) are counted apart."""
    total = _du_sb(DATA) - _du_sb(DATA / "stage0")
    assert total <= MAX_TOTAL_BYTES, f"data/ is {total:,} bytes > {MAX_TOTAL_BYTES:,}"
