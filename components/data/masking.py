"""BERT-style dynamic masking for masked language modelling."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class MlmMasker:
    """Choose each maskable position with probability `mask_prob`; of the chosen, 80% become
    `mask_id`, 10% a random non-special token, 10% stay unchanged. Special and pad positions
    are never chosen; a batch with any maskable position gets at least one masked position.
    The result depends only on the input and the generator's state.
    """

    def __init__(self, vocab_size: int, mask_id: int, special_ids: Iterable[int], pad_id: int, mask_prob: float = 0.15):
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.mask_prob = mask_prob
        self.special_ids = torch.tensor(sorted(set(special_ids) | {pad_id, mask_id}), dtype=torch.long)
        keep = torch.ones(vocab_size, dtype=torch.bool)
        keep[self.special_ids[self.special_ids < vocab_size]] = False
        self.random_ids = torch.nonzero(keep).squeeze(1)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, mask_prob: float = 0.15) -> MlmMasker:
        return cls(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids, tokenizer.pad_token_id, mask_prob)

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(masked_ids, labels)`; labels hold the original id where masked, else -100."""
        device = input_ids.device

        def uniform() -> torch.Tensor:
            return torch.rand(input_ids.shape, generator=generator, device=generator.device).to(device)

        maskable = ~torch.isin(input_ids, self.special_ids.to(device))
        chosen = (uniform() < self.mask_prob) & maskable
        if not chosen.any() and maskable.any():
            candidates = torch.nonzero(maskable.reshape(-1)).squeeze(1)
            pick = torch.randint(len(candidates), (1,), generator=generator, device=generator.device).item()
            chosen.view(-1)[candidates[pick]] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        action = uniform()
        random_idx = torch.randint(len(self.random_ids), input_ids.shape, generator=generator, device=generator.device)
        random_tokens = self.random_ids.to(generator.device)[random_idx].to(device=device, dtype=input_ids.dtype)
        masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, self.mask_id), input_ids)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
        return masked, labels

    def collate(self, rows: Sequence[np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """DataLoader collate for packed blocks: `functools.partial(masker.collate, generator=g)`."""
        input_ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        masked, labels = self(input_ids, generator)
        return {"input_ids": masked, "attention_mask": (input_ids != self.pad_id).long(), "labels": labels}
