"""The plug-in interface of the one fine-tuning loop.

A fine-tuning method is a module inside the TaskModel (`TaskModel.plugins`) that may change
the forward through two model hooks and adds named, already weighted loss terms to the task loss:

    prefix  P = concat of the plug-ins' prefix(batch)      prompt vectors [B, P, d] (or none)
    H       = encoder(embed(x) [+ delta], P)               prompt positions dropped
    Z       = calibrate_k( ... calibrate_1(H))             each plug-in's calibrate, in order
    L       = L_task + sum over plug-ins p of sum over terms k of L_{p,k}

It counts the extra forward/backward passes it makes (for cost accounting). A method is one
subclass plus its entry in `components.methods.registry.FINETUNE_PLUGINS`; with no plug-in the
loop is plain fine-tuning with a [CLS] head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from components.config import Config
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskBatch, TaskInfo, TaskModel, TaskOutput


class FinetunePlugin(nn.Module):
    """Base class: every hook is optional.

    Class side (the driver and every cell):
      enabled(cfg)                         is the method switched on
      validate(cfg, tasks, tokenizer)      check its inputs at plan time (raise InputError)
      build(cfg, mlm, task, tokenizer, base_weights, plugin_state) -> (plug-in or None, notes)
      reads_slot(cfg)                      the method needs its inputs in a template with a mask slot
      pools_at_slot(cfg)                   the task head reads e(x) at that slot (else finetune.pooling)
    Model hooks (called by TaskModel.forward): prefix(batch), calibrate(hidden).
    Loop hooks: set_progress(step, total), loss_terms(model, batch, out).
    `lr`: the learning rate of the plug-in's own parameters; None trains them with the task head
    at finetune.head_lr.
    """

    name = "plugin"
    lr: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.extra_forwards = 0
        self.extra_backwards = 0

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def reads_slot(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def pools_at_slot(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def validate(cls, cfg: Config, tasks: list[TaskInfo], tokenizer: Any) -> None:
        """Check the method's inputs against every configured task."""

    @classmethod
    def build(cls, cfg: Config, mlm: MaskedLM, task: TaskInfo, tokenizer: Any,
              base_weights: dict[str, torch.Tensor] | None,
              plugin_state: dict[str, torch.Tensor] | None) -> tuple["FinetunePlugin | None", list[str]]:
        raise NotImplementedError

    def prefix(self, batch: TaskBatch) -> torch.Tensor | None:
        return None

    def calibrate(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def set_progress(self, step: int, total: int) -> None:
        """Called by the loop before each step s = 0 .. total - 1 (for weights that follow a schedule)."""

    def loss_terms(self, model: TaskModel, batch: TaskBatch, out: TaskOutput) -> dict[str, torch.Tensor]:
        return {}
