"""The fine-tuning model: backbone (+ generated prompts) (+ calibration block) + task head.

    H = encoder(E(x) [+ delta], prefix = P(x))          hidden states of the token positions
    Z = C(H)                                             calibration block (identity when off)
    e(x) = Z[:, 0]  (pooling "cls")  or  Z[:, mask slot] (pooling "mask", a template's slot)
    logits = W e(x) + b

`delta` is an optional perturbation of the input embeddings (CoCa's adversarial step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from components.models.masked_lm import MaskedLM


@dataclass
class TaskBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    mask_pos: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})


@dataclass
class TaskOutput:
    logits: torch.Tensor       # [B, C] task head
    embedding: torch.Tensor    # [B, d] e(x), after the calibration block
    raw_embedding: torch.Tensor  # [B, d] the same slot before the calibration block


class TaskModel(nn.Module):
    def __init__(
        self,
        mlm: MaskedLM,
        num_labels: int,
        pooling: Literal["cls", "mask"] = "cls",
        calibration: nn.Module | None = None,
        prompter: nn.Module | None = None,
        calibrate_mlm_head: bool = False,
        verbalizer_ids: torch.Tensor | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.mlm = mlm
        self.pooling = pooling
        self.calibration = calibration
        self.prompter = prompter
        self.calibrate_mlm_head = calibrate_mlm_head
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(mlm.hidden_size, num_labels)
        self.register_buffer("verbalizer_ids", verbalizer_ids if verbalizer_ids is not None else torch.empty(0, dtype=torch.long))

    def forward(self, batch: TaskBatch, delta: torch.Tensor | None = None) -> TaskOutput:
        embeds = self.mlm.embed(batch.input_ids)
        if delta is not None:
            embeds = embeds + delta
        prefix = self.prompter(batch.input_ids, batch.attention_mask) if self.prompter is not None else None
        hidden = self.mlm.encode(embeds, batch.attention_mask, prefix, batch.token_type_ids)
        calibrated = self.calibration(hidden) if self.calibration is not None else hidden
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        slot = torch.zeros_like(rows) if self.pooling == "cls" else batch.mask_pos
        e, raw = calibrated[rows, slot], hidden[rows, slot]
        return TaskOutput(logits=self.head(self.dropout(e)), embedding=e, raw_embedding=raw)

    def predefined_logits(self, out: TaskOutput) -> torch.Tensor:
        """The MLM head at the slot, restricted to one verbalizer token per class: [B, C]."""
        h = out.embedding if self.calibrate_mlm_head else out.raw_embedding
        return self.mlm.mlm_logits(h)[:, self.verbalizer_ids]


def batches(data: dict[str, torch.Tensor], batch_size: int, order: np.ndarray | None = None):
    """TaskBatches trimmed to the longest sequence in each batch (dynamic padding)."""
    n = len(data["labels"])
    order = np.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        idx = torch.from_numpy(order[s:s + batch_size])
        length = int(data["attention_mask"][idx].sum(1).max())
        yield TaskBatch(
            input_ids=data["input_ids"][idx, :length],
            attention_mask=data["attention_mask"][idx, :length],
            labels=data["labels"][idx],
            token_type_ids=data["token_type_ids"][idx, :length] if "token_type_ids" in data else None,
            mask_pos=data["mask_pos"][idx] if "mask_pos" in data else None,
        )
