"""The plug-in interface of the one fine-tuning loop.

A fine-tuning method adds named, already weighted loss terms to the task loss:

    L = L_task + sum over plug-ins p of sum over terms k of L_{p,k}

and counts the extra forward/backward passes it makes (for cost accounting).
"""

from __future__ import annotations

import torch
from torch import nn

from components.models.task_model import TaskBatch, TaskModel, TaskOutput


class FinetunePlugin(nn.Module):
    name = "plugin"

    def __init__(self) -> None:
        super().__init__()
        self.extra_forwards = 0
        self.extra_backwards = 0

    def set_progress(self, step: int, total: int) -> None:
        """Called by the loop before each step s = 0 .. total - 1 (for weights that follow a schedule)."""

    def loss_terms(self, model: TaskModel, batch: TaskBatch, out: TaskOutput) -> dict[str, torch.Tensor]:
        return {}
