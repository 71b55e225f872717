"""Pack tokenized documents into fixed-size MLM blocks: [CLS] chunk [SEP] (+ [PAD] at the end)."""

from __future__ import annotations

from itertools import chain

import numpy as np


def pack_blocks(docs_token_ids: list[list[int]], block_size: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """Concatenate the documents with `sep_id` between them and cut the stream into blocks.

    Each block is `[CLS] chunk [SEP]` with `block_size - 2` content tokens; only the last
    block is shorter, padded with `pad_id` after its [SEP]. No token is lost or repeated.
    Empty documents are skipped. Returns int32 `[n_blocks, block_size]` (0 rows for no tokens).
    """
    if block_size < 3:
        raise ValueError(f"block_size must be >= 3, got {block_size}")
    docs = [d for d in docs_token_ids if len(d)]
    n_tokens = sum(len(d) for d in docs) + max(len(docs) - 1, 0)
    pieces = (chain((sep_id,), d) if i else d for i, d in enumerate(docs))
    stream = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=n_tokens)
    width = block_size - 2
    n_blocks = -(-n_tokens // width)
    content = np.full(n_blocks * width, pad_id, dtype=np.int32)
    content[:n_tokens] = stream
    blocks = np.full((n_blocks, block_size), pad_id, dtype=np.int32)
    blocks[:, 0] = cls_id
    blocks[:, 1 : width + 1] = content.reshape(n_blocks, width)
    blocks[:, width + 1] = sep_id
    if n_blocks and n_tokens % width:
        blocks[-1, 1 + n_tokens % width] = sep_id
        blocks[-1, width + 1] = pad_id
    return blocks
