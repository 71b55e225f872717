"""The plug-in interface of the one continual pre-training loop.

A method is an `nn.Module` that may own extra parameters (trained with the model, wrapped by
the same DDP) and adds *named, already weighted* loss terms; it never forks the loop. With
every method off the loop is naive continual MLM pre-training (NCL):

    L = L_MLM + sum over plug-ins p of sum over terms k of L_{p,k}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from components.config import Config
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
    files: dict[str, str] = field(default_factory=dict)  # inputs on disk by key (e.g. cached expert logits)


@dataclass
class Tokens:
    """Tokenizer facts the workers need (they never load the tokenizer)."""

    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: list[int]


class Driver(Protocol):
    """What the run's driver (components/run) offers a plug-in's driver-side hooks."""

    cfg: Config
    run_root: Path                 # the run directory: a plug-in may keep files under it (e.g. experts/)
    tokens: Tokens
    tokenizer: Any
    build_task_model: Callable     # how cells build task models (components.methods.registry)

    def base_weights(self) -> dict[str, torch.Tensor]:
        """The stage-0 model's weights."""

    def run_task(self, fn: Callable, *args) -> Any:
        """fn(*args) as a Ray task with an anytime cell's resources; its result."""


class PretrainPlugin(nn.Module):
    """Base class: every hook is optional; a method is one subclass plus its entry in
    `components.methods.registry.PRETRAIN_PLUGINS`.

    On the driver (class methods, before any worker starts):
      enabled(cfg)                          is the method switched on
      validate(cfg, model_config)           check its inputs at plan time (raise InputError)
      prepare_stage(cfg, stage, blocks, fingerprint, driver) -> payload
                                            per-stage preparation; the payload reaches `build` on
                                            every worker (e.g. cached teacher logits)
      uses_row0_models(cfg)                 needs fine-tuned models of row 0 before stage 1
      wants_cell_model(cfg, task, driver)   keep row 0's first-seed model of `task` ...
      keep_cell_model(cfg, task, record, state, driver)   ... and receive it
    On every worker: `build(cfg, model, payload)` makes the plug-in; `meta()` / `load_meta(meta)`
    carry its JSON state (beside its tensors) from checkpoint to checkpoint and stage to stage.
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

    # -- driver side

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def validate(cls, cfg: Config, model_config: Any) -> None:
        """Check the method's inputs against the config and the model's HF config."""

    @classmethod
    def prepare_stage(cls, cfg: Config, stage: StageInfo, blocks: np.ndarray, fingerprint: str,
                      driver: Driver) -> dict:
        """The payload of `stage` for `build` (blocks: the stage's training blocks, in block_index order)."""
        return {}

    @classmethod
    def uses_row0_models(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def wants_cell_model(cls, cfg: Config, task: str, driver: Driver) -> bool:
        return False

    @classmethod
    def keep_cell_model(cls, cfg: Config, task: str, record: dict, state: dict, driver: Driver) -> None:
        """Receive the fine-tuned weights of row 0's first-seed cell of `task` (see wants_cell_model)."""

    # -- worker side

    @classmethod
    def build(cls, cfg: Config, model: MaskedLM, payload: dict) -> "PretrainPlugin":
        raise NotImplementedError

    def meta(self) -> dict:
        """JSON-serialisable state that is not a tensor (saved to meta.json with every checkpoint)."""
        return {}

    def load_meta(self, meta: dict) -> None:
        """Restore what `meta` returned."""

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
