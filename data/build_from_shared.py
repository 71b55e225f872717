#!/usr/bin/env python
"""Rebuild the benchmark data shipped in ``data/`` from the shared source tree.

Usage (from the repository root)::

    python data/build_from_shared.py --source ../shared/data

What it writes (see ``data/README.md`` for provenance and terms):

* ``data/<domain>/corpus.parquet`` for the six domains (restaurant, laptop, acl, ai,
  biomed, tweet): one string column ``text``, one row per line of the source
  ``corpus.txt`` (in order, nothing dropped), zstd-compressed.  The script checks
  that ``"\\n".join(rows) + "\\n"`` reproduces ``corpus.txt`` byte for byte.
* ``data/<domain>/{train,dev,test}.jsonl`` and ``labels.json``: byte-identical copies.
* ``data/general/corpus.parquet``: general-English single sentences from the GLUE
  *train* splits (SST-2, CoLA, MRPC, RTE, STS-B), for warming up an MLM head.
* ``data/SHA256SUMS``: checksums of every file written above (``sha256sum -c`` format,
  paths relative to ``data/``).

At the end it prints a size/row-count table (markdown) and per-domain statistics.
The source tree is only read, never written.  The product itself never reads the
source tree; only this build script does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DOMAINS = ("restaurant", "laptop", "acl", "ai", "biomed", "tweet")
TASK_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "labels.json")
SPLITS = ("train", "dev", "test")

# GLUE *train*-split fields that feed data/general: (task, fields, labels to skip).
# Only train splits are used, so the GLUE dev/test sets stay unseen. CoLA sentences
# labelled "unacceptable" are ungrammatical on purpose and are not used as MLM text.
GENERAL_SOURCES = (
    ("sst2", ("text",), ()),
    ("cola", ("text",), ("unacceptable",)),
    ("mrpc", ("text", "text_b"), ()),
    ("rte", ("text", "text_b"), ()),
    ("stsb", ("text", "text_b"), ()),
)

DATA_DIR = Path(__file__).resolve().parent
REPO_ROOT = DATA_DIR.parent


# --------------------------------------------------------------------------- parquet


def write_text_parquet(path: Path, texts: list[str], level: int, row_group_bytes: int) -> None:
    """Write ``texts`` as a one-column (``text``) parquet file, zstd-compressed.

    Row groups are cut so that each holds about ``row_group_bytes`` of UTF-8 text
    (at least one row). Dictionary encoding and statistics are off: rows are
    (near-)unique documents, so both only cost space.
    """
    schema = pa.schema([pa.field("text", pa.string(), nullable=False)])
    tmp = path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(
        tmp,
        schema,
        compression="zstd",
        compression_level=level,
        use_dictionary=False,
        write_statistics=False,
    ) as writer:
        start, acc = 0, 0
        for i, t in enumerate(texts):
            acc += len(t.encode("utf-8")) + 1
            if acc >= row_group_bytes:
                writer.write_table(pa.table({"text": pa.array(texts[start : i + 1], pa.string())}, schema=schema))
                start, acc = i + 1, 0
        if start < len(texts) or not texts:
            writer.write_table(pa.table({"text": pa.array(texts[start:], pa.string())}, schema=schema))
    os.replace(tmp, path)


def read_text_parquet(path: Path) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


# --------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_corpus_lines(path: Path) -> list[str]:
    """Split on '\\n' only (not str.splitlines, which also splits on \\x1c, \\x85, \\u2028...)."""
    raw = path.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rebuilt = "\n".join(lines) + ("\n" if raw.endswith("\n") else "")
    if rebuilt != raw:  # pragma: no cover - defensive
        raise SystemExit(f"{path}: line split is not lossless")
    empty = [i for i, t in enumerate(lines) if not t.strip()]
    if empty:
        raise SystemExit(f"{path}: {len(empty)} empty line(s), first at line {empty[0] + 1}")
    return lines


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(values)
    if not s:
        return 0
    k = max(1, int(-(-q * len(s) // 100)))  # ceil(q*n/100), at least 1
    return s[min(k, len(s)) - 1]


def dir_size(path: Path) -> int:
    """Apparent size in bytes, like `du -sb` (file sizes plus directory entries)."""
    total = path.stat().st_size
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            total += p.lstat().st_size
    return total


def fmt_mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


# --------------------------------------------------------------------------- general set


def _norm_key(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def _drop_contained_phrases(texts: list[str]) -> list[str]:
    """Drop items whose normalised form is a substring of a longer item.

    SST-2 train is made of parse-tree phrases: most rows are pieces of another row.
    Keeping only maximal phrases leaves (approximately) the full sentences. Uses an
    inverted index on each item's rarest token so it runs in seconds.
    """
    keys = [_norm_key(t) for t in texts]
    toks = [k.split(" ") for k in keys]
    df = Counter(w for ts in toks for w in set(ts))
    index: dict[str, list[int]] = {}
    for i, ts in enumerate(toks):
        for w in set(ts):
            index.setdefault(w, []).append(i)
    keep = []
    for i, ts in enumerate(toks):
        rare = min(set(ts), key=lambda w: (df[w], w))
        k = " " + keys[i] + " "
        contained = False
        for j in index[rare]:
            if j != i and len(keys[j]) > len(keys[i]) and k in " " + keys[j] + " ":
                contained = True
                break
        if not contained:
            keep.append(texts[i])
    return keep


def build_general(source: Path, seed: int, min_words: int) -> tuple[list[str], dict[str, int]]:
    """Collect, filter, deduplicate and shuffle the general-English sentences."""
    seen: set[str] = set()
    out: list[str] = []
    counts: dict[str, int] = {}
    for task, fields, skip_labels in GENERAL_SOURCES:
        path = source / "glue" / task / "train.jsonl"
        texts = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row.get("label") in skip_labels:
                    continue
                for field in fields:
                    t = row.get(field)
                    if isinstance(t, str):
                        t = re.sub(r"\s+", " ", t).strip()
                        if len(t.split()) >= min_words:
                            texts.append(t)
        if task == "sst2":
            texts = _drop_contained_phrases(texts)
        n = 0
        for t in texts:
            k = _norm_key(t)
            if k not in seen:
                seen.add(k)
                out.append(t)
                n += 1
        counts[task] = n
    random.Random(seed).shuffle(out)
    return out, counts


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                    help="source data tree (default: ../shared/data relative to the repo root)")
    ap.add_argument("--dest", type=Path, default=DATA_DIR, help="output directory (default: data/)")
    ap.add_argument("--zstd-level", type=int, default=19)
    ap.add_argument("--row-group-mb", type=float, default=4.0,
                    help="target uncompressed text per parquet row group, in MB (default 4)")
    ap.add_argument("--general-max-mb", type=float, default=2.9,
                    help="cap on data/general/corpus.parquet size in MB (default 2.9)")
    ap.add_argument("--general-min-words", type=int, default=4)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-total-mb", type=float, default=40.0,
                    help="fail if the output directory (du -sb) exceeds this many MB (1 MB = 10^6 bytes; default 40)")
    args = ap.parse_args(argv)

    src: Path = args.source.resolve()
    dest: Path = args.dest.resolve()
    if not (src / "README.md").is_file() or not all((src / d).is_dir() for d in DOMAINS):
        raise SystemExit(f"--source {src}: not the shared data tree (need README.md and {', '.join(DOMAINS)})")
    row_group_bytes = int(args.row_group_mb * 1e6)
    written: list[Path] = []
    table = []  # rows for the size table
    stats = []  # per-domain statistics

    for d in DOMAINS:
        out = dest / d
        out.mkdir(parents=True, exist_ok=True)
        lines = read_corpus_lines(src / d / "corpus.txt")
        pq_path = out / "corpus.parquet"
        write_text_parquet(pq_path, lines, args.zstd_level, row_group_bytes)
        if read_text_parquet(pq_path) != lines:  # pragma: no cover - defensive
            raise SystemExit(f"{pq_path}: round trip failed")
        written.append(pq_path)
        for name in TASK_FILES:
            shutil.copyfile(src / d / name, out / name)
            if sha256(src / d / name) != sha256(out / name):  # pragma: no cover
                raise SystemExit(f"{out / name}: copy differs from source")
            written.append(out / name)

        labels = json.loads((src / d / "labels.json").read_text(encoding="utf-8"))
        split_rows, split_labels, has_b = {}, {}, {}
        for sp in SPLITS:
            rows = [json.loads(l) for l in (src / d / f"{sp}.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
            split_rows[sp] = len(rows)
            split_labels[sp] = Counter(r["label"] for r in rows)
            has_b[sp] = all("text_b" in r for r in rows)
        lens = [len(t) for t in lines]
        meta = pq.ParquetFile(pq_path).metadata
        table.append({
            "dir": d,
            "corpus_rows": len(lines),
            "corpus_txt_bytes": (src / d / "corpus.txt").stat().st_size,
            "parquet_bytes": pq_path.stat().st_size,
            "row_groups": meta.num_row_groups,
            "train": split_rows["train"], "dev": split_rows["dev"], "test": split_rows["test"],
            "dir_bytes": dir_size(out),
        })
        stats.append({
            "dir": d,
            "labels": labels,
            "text_b": has_b,
            "max_len": max(lens),
            "p99_len": percentile(lens, 99),
            "p50_len": percentile(lens, 50),
            "mean_len": sum(lens) / len(lens),
            "label_counts": split_labels,
            "missing": {sp: [l for l in labels if split_labels[sp][l] == 0] for sp in SPLITS},
            "unknown": {sp: sorted(set(split_labels[sp]) - set(labels)) for sp in SPLITS},
        })

    # ---- general English set
    gen_dir = dest / "general"
    gen_dir.mkdir(parents=True, exist_ok=True)
    general, per_task = build_general(src, args.seed, args.general_min_words)
    n_all = len(general)
    gen_path = gen_dir / "corpus.parquet"
    cap = int(args.general_max_mb * 1e6)
    n = n_all
    while True:
        write_text_parquet(gen_path, general[:n], args.zstd_level, row_group_bytes)
        size = gen_path.stat().st_size
        if size <= cap:
            break
        n = int(n * cap / size * 0.98)  # shrink proportionally, keep the shuffled prefix
    general = general[:n]
    if read_text_parquet(gen_path) != general:  # pragma: no cover
        raise SystemExit(f"{gen_path}: round trip failed")
    written.append(gen_path)
    glens = [len(t) for t in general]
    table.append({
        "dir": "general", "corpus_rows": n, "corpus_txt_bytes": sum(len(t.encode()) + 1 for t in general),
        "parquet_bytes": size, "row_groups": pq.ParquetFile(gen_path).metadata.num_row_groups,
        "train": None, "dev": None, "test": None, "dir_bytes": dir_size(gen_dir),
    })

    # ---- checksums
    sums = dest / "SHA256SUMS"
    sums.write_text("".join(f"{sha256(p)}  {p.relative_to(dest).as_posix()}\n" for p in written), encoding="utf-8")

    # ---- report
    total = dir_size(dest)
    print("\n| dir | corpus rows | corpus.txt (source) | corpus.parquet | row groups | train | dev | test | dir size |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        tr = lambda k: "-" if r[k] is None else str(r[k])
        print(f"| {r['dir']} | {r['corpus_rows']:,} | {fmt_mb(r['corpus_txt_bytes'])} | {fmt_mb(r['parquet_bytes'])} "
              f"| {r['row_groups']} | {tr('train')} | {tr('dev')} | {tr('test')} | {fmt_mb(r['dir_bytes'])} ({r['dir_bytes']:,} B) |")
    print(f"\nwhole {dest.name}/ (du -sb): {total:,} bytes = {fmt_mb(total)}")
    print(f"general: {n:,} of {n_all:,} candidate sentences kept (cap {fmt_mb(cap)}); "
          f"unique per task after filtering: {per_task}; max line {max(glens)} chars, p99 {percentile(glens, 99)}")

    print("\n| domain | longest corpus line (chars) | p99 | median | mean | text_b | labels missing per split |")
    print("|---|---:|---:|---:|---:|---|---|")
    for s in stats:
        miss = "; ".join(f"{sp}: {', '.join(v)}" for sp, v in s["missing"].items() if v) or "none"
        tb = "yes" if all(s["text_b"].values()) else ("partly" if any(s["text_b"].values()) else "no")
        print(f"| {s['dir']} | {s['max_len']:,} | {s['p99_len']:,} | {s['p50_len']:,} | {s['mean_len']:.0f} | {tb} | {miss} |")
        unk = {sp: v for sp, v in s["unknown"].items() if v}
        if unk:
            print(f"  WARNING {s['dir']}: labels not in labels.json: {unk}")
    print("\nlabel counts (train/dev/test):")
    for s in stats:
        parts = [f"{l}={s['label_counts']['train'][l]}/{s['label_counts']['dev'][l]}/{s['label_counts']['test'][l]}"
                 for l in s["labels"]]
        print(f"  {s['dir']}: " + ", ".join(parts))

    if total > args.max_total_mb * 1e6:
        print(f"ERROR: {dest} is {total:,} bytes > {args.max_total_mb} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
