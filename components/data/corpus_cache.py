"""Tokenized, packed corpus blocks with a held-out split, cached on disk as Parquet.

Cache file: `<cache_dir>/blocks/<key>.parquet` (zstd; columns `input_ids`, a fixed-size
int32 list per block, and `heldout`, bool) plus `<key>.json` with human-readable metadata.
The key hashes everything that changes the blocks: the tokenizer, block size, held-out
fraction, document limits, text column and the bytes of the corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from components.data.domains import SPLITS, Domain, corpus_file, hf_task_fingerprints, iter_documents, read_corpus
from components.data.packing import pack_blocks
from components.data.tokenization import encode_plain
from components.errors import InputError
from components.io import atomic_write_bytes, atomic_write_json, sha256_file
from components.progress import Progress

CACHE_FORMAT = 1
_file_fingerprints: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class CorpusBlocks:
    """Packed blocks of one corpus: int32 `[n, block_size]` train and held-out arrays."""

    train: np.ndarray
    heldout: np.ndarray
    fingerprint: str  # sha256 of the corpus content
    path: Path  # the cache file
    cache_hit: bool


def fingerprint_file(path: Path | str) -> str:
    """sha256 of the file's bytes, memoised per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _file_fingerprints:
        _file_fingerprints[memo_key] = sha256_file(path)
    return _file_fingerprints[memo_key]


def task_fingerprints(domain: Domain) -> dict[str, str]:
    """Fingerprints of the task's data: sha256 of each jsonl split and labels.json, or the
    `datasets` fingerprint of each split of a HF-dataset task."""
    if domain.task_source is not None:
        return hf_task_fingerprints(domain)
    return {s: fingerprint_file(getattr(domain, s)) for s in (*SPLITS, "labels")}


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's class name and its vocabulary / pipeline definition.

    Truncation and padding settings are left out: the transformers wrapper changes them on
    every call, and they do not change how text is split into tokens.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"vocab": tokenizer.get_vocab(), "special": tokenizer.all_special_tokens}
    payload = type(tokenizer).__name__ + json.dumps(spec, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def source_fingerprint(domain: Domain) -> str:
    """sha256 of the corpus: the file's bytes, or the documents of a hub dataset."""
    if not domain.hf_dataset:
        return fingerprint_file(corpus_file(domain))
    digest = hashlib.sha256(f"hf\0{domain.hf_dataset}\0{domain.hf_split}\0".encode())
    for doc in iter_documents(domain):
        digest.update(doc.encode("utf-8") + b"\0")
    return digest.hexdigest()


def heldout_mask(docs: list[str], heldout_fraction: float) -> list[bool]:
    """Which documents are held out, decided by a hash of each document's text.

    A document's side depends only on its text, so the split is stable when documents are
    added. Each side gets at least one document when there are two or more.
    """
    scores = [int.from_bytes(hashlib.blake2b(d.encode("utf-8"), digest_size=8).digest(), "big") / 2**64 for d in docs]
    mask = [s < heldout_fraction for s in scores]
    if len(docs) >= 2 and not any(mask):
        mask[int(np.argmin(scores))] = True
    if len(docs) >= 2 and all(mask):
        mask[int(np.argmax(scores))] = False
    return mask


def load_corpus_blocks(
    domain: Domain,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    cache_dir: Path | str,
    heldout_fraction: float,
    max_docs: int | None = None,
    max_doc_chars: int = 20000,
) -> CorpusBlocks:
    """Packed train / held-out blocks of the domain's corpus, from the cache when possible."""
    fingerprint = source_fingerprint(domain)
    settings = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block_size": block_size,
        "heldout_fraction": heldout_fraction,
        "max_docs": max_docs,
        "max_doc_chars": max_doc_chars,
        "text_column": domain.text_column,
        "source": fingerprint,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir) / "blocks" / f"{key}.parquet"
    if path.is_file():
        train, heldout = _read_blocks(path, block_size)
        return CorpusBlocks(train, heldout, fingerprint, path, cache_hit=True)

    start = time.perf_counter()
    texts = read_corpus(domain, max_docs, max_doc_chars)
    progress = Progress(f"tokenize {domain.name}", len(texts), "documents")
    encoded = encode_plain(tokenizer, texts, on_batch=progress.update)
    progress.close()
    pairs = [(doc, tok) for doc, tok in zip(texts, encoded) if tok]
    docs, ids = [d for d, _ in pairs], [i for _, i in pairs]
    if len(docs) < 2:
        raise InputError(f"{domain.corpus_source}: corpus of domain '{domain.name}' needs at least 2 documents (one is held out), found {len(docs)}")
    mask = heldout_mask(docs, heldout_fraction)
    special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    train = pack_blocks([d for d, h in zip(ids, mask) if not h], block_size, *special)
    heldout = pack_blocks([d for d, h in zip(ids, mask) if h], block_size, *special)
    _write_blocks(path, train, heldout)
    print(f"tokenize {domain.name}: {len(docs):,} documents -> {len(train):,} train / {len(heldout):,} held-out "
          f"blocks of {block_size} tokens in {time.perf_counter() - start:.1f}s", flush=True)
    meta = {
        "domain": domain.name,
        "corpus": domain.corpus_source,
        "docs": {"train": mask.count(False), "heldout": mask.count(True)},
        "blocks": {"train": len(train), "heldout": len(heldout)},
        "seconds": round(time.perf_counter() - start, 3),
        **settings,
    }
    atomic_write_json(path.with_suffix(".json"), meta)
    return CorpusBlocks(train, heldout, fingerprint, path, cache_hit=False)


def _write_blocks(path: Path, train: np.ndarray, heldout: np.ndarray) -> None:
    blocks = np.concatenate([train, heldout])
    ids = pa.FixedSizeListArray.from_arrays(pa.array(blocks.reshape(-1), pa.int32()), blocks.shape[1])
    flags = pa.array(np.arange(len(blocks)) >= len(train))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"input_ids": ids, "heldout": flags}), buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def _read_blocks(path: Path, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    ids = table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(-1, block_size)
    heldout = table.column("heldout").to_numpy()
    return np.ascontiguousarray(ids[~heldout]), np.ascontiguousarray(ids[heldout])
