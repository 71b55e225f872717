"""Encode a task split into padded tensors, plainly or wrapped in a prompt template.

A template is text with the slots `{text}`, `{text_b}` (pair tasks) and `{mask}` (or the
tokenizer's literal mask token), e.g. "{text} It was {mask}." Under truncation only the
texts are cut (longest first), never the template, so the mask slot always survives;
`mask_pos` gives its index per example.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from components.data.domains import TaskData
from components.data.tokenization import encode_plain
from components.errors import InputError

SLOT = re.compile(r"(\{text\}|\{text_b\}|\{mask\})")


def default_template(tokenizer: PreTrainedTokenizerBase, is_pair: bool) -> str:
    """A template ending in the mask slot; pairs are joined by the separator token."""
    return f"{{text}} {tokenizer.sep_token} {{text_b}} It was {{mask}}." if is_pair else "{text} It was {mask}."


def template_suffix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of the default single-text template after its text slot (" It was [MASK].")."""
    pieces = _template_pieces(default_template(tokenizer, False), tokenizer, False)
    return [tok for p in pieces if not isinstance(p, Slot) for tok in p]


def encode_task(
    task: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int, template: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors padded to the longest example: input_ids, attention_mask, labels, plus
    token_type_ids when the model takes them and, with a template, mask_pos."""
    label_dtype = torch.float32 if task.is_regression else torch.long
    labels = torch.tensor(task.labels, dtype=label_dtype)
    if template is None:
        enc = tokenizer(
            task.texts,
            task.texts_b,
            truncation=True,
            max_length=max_length,
            padding="longest",
            split_special_tokens=True,
            return_tensors="pt",
        )
        return {**enc, "labels": labels}
    rows = _templated_rows(task, tokenizer, max_length, template)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": labels,
        "mask_pos": torch.tensor([r.index(tokenizer.mask_token_id) for r in rows]),
    }
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = torch.zeros_like(input_ids)
    return out


class Slot(NamedTuple):
    """A text slot of a template; `space` when whitespace precedes it in the template."""

    name: str
    space: bool


def _templated_rows(task: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int, template: str) -> list[list[int]]:
    """Token ids per example: [CLS] template-with-texts [SEP], texts truncated to fit."""
    pieces = _template_pieces(template, tokenizer, task.texts_b is not None)
    fixed = sum(len(p) for p in pieces if isinstance(p, list)) + 2
    budget = max_length - fixed
    if budget < 1:
        raise InputError(f"template {template!r} takes {fixed} tokens, leaving no room for text within max_length {max_length}")
    texts = {"text": task.texts, "text_b": task.texts_b or []}
    encoded = {
        p.name: encode_plain(tokenizer, [" " + t if p.space else t for t in texts[p.name]]) for p in pieces if isinstance(p, Slot)
    }
    rows = []
    for i in range(len(task)):
        a, b = encoded["text"][i], encoded["text_b"][i] if "text_b" in encoded else []
        keep_a = min(len(a), max(budget - len(b), (budget + 1) // 2))  # longest first
        kept = {"text": a[:keep_a], "text_b": b[: budget - keep_a]}
        body = [tok for p in pieces for tok in (kept[p.name] if isinstance(p, Slot) else p)]
        rows.append([tokenizer.cls_token_id, *body, tokenizer.sep_token_id])
    return rows


def _template_pieces(template: str, tokenizer: PreTrainedTokenizerBase, is_pair: bool) -> list[list[int] | Slot]:
    """Split a template into token-id lists (fixed text, the mask) and text slots."""
    parts = SLOT.split(template)
    pieces: list[list[int] | Slot] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            literal = part.rstrip() if i + 1 < len(parts) else part
            if literal:
                pieces.append(tokenizer(literal, add_special_tokens=False)["input_ids"])
        elif part == "{mask}":
            pieces.append([tokenizer.mask_token_id])
        else:
            pieces.append(Slot(part.strip("{}"), parts[i - 1][-1:].isspace()))
    names = sorted(p.name for p in pieces if isinstance(p, Slot))
    n_masks = sum(p.count(tokenizer.mask_token_id) for p in pieces if isinstance(p, list))
    if names != (["text", "text_b"] if is_pair else ["text"]) or n_masks != 1:
        slots = "{text} and {text_b}" if is_pair else "{text} (and no {text_b})"
        raise InputError(f"template {template!r}: needs {slots} once each and exactly one {{mask}} for this task")
    return pieces
