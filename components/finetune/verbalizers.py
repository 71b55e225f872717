"""Verbalizers: one vocabulary token per class for CoCa's pre-defined head (docs/methods.md).

Default word of a label: lowercase, `_` and `-` become spaces ("PART-OF" -> "part of").
Its token is the first piece of `tokenizer(" " + word)`: the leading space gives the
mid-sentence form of RoBERTa-style BPE ("Ġword"), WordPiece ignores it, and pieces that are
only a word-start marker (a lone SentencePiece "▁") are skipped. A word of several pieces is
represented by its first piece, with a note. Overrides (`domains[i].verbalizers`, label -> word)
replace the default word and are used as written (not lowercased). Two classes on one token
could not be told apart by the pre-defined head, so that is an InputError.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from components.errors import InputError


def default_word(label: str) -> str:
    """"SUBSTRATE_PRODUCT-OF" -> "substrate product of"."""
    return label.lower().replace("_", " ").replace("-", " ").strip()


def verbalizer_ids(
    label_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    overrides: dict[str, str] | None = None,
    where: str = "domains[i].verbalizers",
) -> tuple[torch.Tensor, list[str]]:
    """Token ids [C] (one per class, in label order) and notes on multi-piece words.

    `where` names the config field in error messages (e.g. "domains[2].verbalizers").
    """
    overrides = overrides or {}
    unknown = [k for k in overrides if k not in label_names]
    if unknown:
        raise InputError(f"{where}: {unknown} are not labels of this task (labels: {label_names})")
    ids: list[int] = []
    notes: list[str] = []
    for label in label_names:
        word = overrides[label] if label in overrides else default_word(label)
        pieces = [
            i for i in tokenizer(" " + word, add_special_tokens=False)["input_ids"] if tokenizer.decode([i]).strip()
        ]
        if not pieces or pieces[0] == tokenizer.unk_token_id:
            raise InputError(f"{where}: label '{label}': the word '{word}' has no vocabulary token; give another word")
        if len(pieces) > 1:
            names = tokenizer.convert_ids_to_tokens(pieces)
            notes.append(f"label '{label}': '{word}' is {len(pieces)} tokens {names}; its verbalizer is '{names[0]}'")
        ids.append(pieces[0])
    by_id: dict[int, list[str]] = {}
    for label, i in zip(label_names, ids):
        by_id.setdefault(i, []).append(label)
    clashes = [labels for labels in by_id.values() if len(labels) > 1]
    if clashes:
        listed = "; ".join(
            f"{labels} -> '{tokenizer.convert_ids_to_tokens(ids[label_names.index(labels[0])])}'" for labels in clashes
        )
        example = ", ".join(f"{label}: <word>" for label in clashes[0][1:])
        raise InputError(
            f"{where}: classes share a verbalizer token ({listed}); "
            f"give them distinct words, e.g. {where}: {{{example}}}"
        )
    return torch.tensor(ids, dtype=torch.long), notes
