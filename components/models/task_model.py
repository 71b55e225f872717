"""The fine-tuning model: backbone + the fine-tuning plug-ins' model hooks + task head.

    H = encoder(E(x) [+ delta], prefix = P(x))          P: the plug-ins' prefixes (e.g. generated prompts)
    Z = C_k(...C_1(H))                                   the plug-ins' calibrate hooks (identity when none)
    e(x) = Z[:, 0]  (pooling "cls"),  Z[:, mask slot]  (pooling "mask", a template's slot),
           or  sum_t m_t Z[:, t] / sum_t m_t  (pooling "mean" over the real tokens, m = attention mask)
    logits = W e(x) + b

`delta` is an optional perturbation of the input embeddings (CoCa's adversarial step).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from components.models.masked_lm import MaskedLM


@dataclass
class TaskInfo:
    name: str
    label_names: list[str] | None   # None for regression
    verbalizers: dict[str, str] | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


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
    raw_embedding: torch.Tensor  # [B, d] the same pooling before the calibration block
    slot: torch.Tensor | None = None      # [B, d] the template's mask-slot state after calibration (None: no slot)
    raw_slot: torch.Tensor | None = None  # [B, d] the same before calibration


class TaskModel(nn.Module):
    """Backbone + fine-tuning plug-ins (their `prefix` and `calibrate` hooks) + task head.

    `plugins`: modules with `prefix(batch) -> [B, P, d] | None` and `calibrate(hidden) -> hidden`
    (components.finetune.plugin.FinetunePlugin); their parameters are the model's."""

    def __init__(
        self,
        mlm: MaskedLM,
        num_labels: int,
        pooling: Literal["cls", "mask", "mean"] = "cls",
        plugins: Sequence[nn.Module] = (),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.mlm = mlm
        self.pooling = pooling
        self.plugins = nn.ModuleList(plugins)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(mlm.hidden_size, num_labels)

    def forward(self, batch: TaskBatch, delta: torch.Tensor | None = None) -> TaskOutput:
        embeds = self.mlm.embed(batch.input_ids)
        if delta is not None:
            embeds = embeds + delta
        prefixes = [p for p in (plugin.prefix(batch) for plugin in self.plugins) if p is not None]
        prefix = torch.cat(prefixes, dim=1) if prefixes else None
        hidden = self.mlm.encode(embeds, batch.attention_mask, prefix, batch.token_type_ids)
        calibrated = hidden
        for plugin in self.plugins:
            calibrated = plugin.calibrate(calibrated)
        e, raw = self.pool(calibrated, batch), self.pool(hidden, batch)
        slot = raw_slot = None
        if batch.mask_pos is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            slot, raw_slot = calibrated[rows, batch.mask_pos], hidden[rows, batch.mask_pos]
        return TaskOutput(logits=self.head(self.dropout(e)), embedding=e, raw_embedding=raw, slot=slot,
                          raw_slot=raw_slot)


    def pool(self, z: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        if self.pooling == "mean":
            m = batch.attention_mask.unsqueeze(-1).to(z.dtype)
            return (z * m).sum(1) / m.sum(1).clamp_min(1)
        rows = torch.arange(z.shape[0], device=z.device)
        return z[rows, 0 if self.pooling == "cls" else batch.mask_pos]


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


def infer(fn, data: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """fn(batch) -> [b, ...] for every example, returned in data order. The batches run in order of
    sequence length, so each pads to nearly its own length instead of to its longest stray example."""
    order = np.argsort(data["attention_mask"].sum(1).numpy(), kind="stable")
    out = torch.cat([fn(b) for b in batches(data, batch_size, order)])
    return out[torch.from_numpy(np.argsort(order, kind="stable"))]
