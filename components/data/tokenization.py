"""Plain tokenization of raw text: no special tokens added, no truncation, no padding.

Strings such as "[MASK]" or "[SEP]" inside the text are encoded as ordinary text, so a
corpus or task example can never inject a real special token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase


def encode_plain(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1000,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """Token ids of every text in `texts`, tokenized in batches of `batch_size`; `on_batch(n)`
    is called with the number of texts done after each batch (progress)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    out: list[list[int]] = []
    if backend is None:  # a Python (slow) tokenizer
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            out.extend(tokenizer(batch, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"])
            if on_batch:
                on_batch(len(out))
        return out
    # A private copy: the wrapper keeps call-dependent truncation/padding state on its backend.
    encoder = Tokenizer.from_str(backend.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    encoder.encode_special_tokens = True
    for i in range(0, len(texts), batch_size):
        out.extend(e.ids for e in encoder.encode_batch(list(texts[i : i + batch_size]), add_special_tokens=False))
        if on_batch:
            on_batch(len(out))
    return out
