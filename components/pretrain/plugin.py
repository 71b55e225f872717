"""The plug-in interface of the one continual pre-training loop.

A method is an `nn.Module` that may own extra parameters (trained with the model, wrapped by
the same DDP) and adds *named, already weighted* loss terms; it never forks the loop. With
every method off the loop is naive continual MLM pre-training (NCL):

    L = L_MLM + sum over plug-ins p of sum over terms k of L_{p,k}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from components.models.masked_lm import MaskedLM


@dataclass
class StageInfo:
    """What a plug-in may know about the stage being trained (no domain id reaches the model)."""

    index: int                     # 1..N (stage 0 is the base model)
    domain: str                    # the domain trained in this stage
    domains_seen: list[str]        # domains of stages 1..index, in order
    domain_order: list[str]        # every configured domain, in order
    work_dir: Path                 # a directory the plug-in may use for caches
    world_size: int = 1
    rank: int = 0
    files: dict[str, str] = field(default_factory=dict)  # prepared inputs (e.g. cached expert logits)


class PretrainPlugin(nn.Module):
    """Base class: every hook is optional.

    Per step the loop calls, in order:
      ctx = {}
      prefix = plugin.prefix(model, batch, ctx)          # optional prompt vectors [B, P, d]
      hidden = model.encode(embeds, mask, prefix)         # one forward, prompt positions dropped
      terms = plugin.loss_terms(model, batch, hidden, ctx)
    `batch` holds input_ids (masked), attention_mask, labels (-100 = not masked) and
    block_index (row of each block in the stage's training blocks). `ctx` carries per-step
    results between the two hooks (e.g. a frozen teacher forward reused twice).
    """

    name = "plugin"

    def begin_stage(self, stage: StageInfo, model: MaskedLM) -> None:
        """Called on every worker before the stage's first step (after any checkpoint restore)."""

    def prefix(self, model: MaskedLM, batch: dict[str, torch.Tensor], ctx: dict) -> torch.Tensor | None:
        return None

    def loss_terms(
        self, model: MaskedLM, batch: dict[str, torch.Tensor], hidden: torch.Tensor, ctx: dict
    ) -> dict[str, torch.Tensor]:
        return {}

    def end_stage(self, stage: StageInfo, model: MaskedLM, blocks: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Called on every worker after the last step, with this worker's shard of the stage's
        clean (unmasked) training blocks; state must end identical on every rank."""
