"""The Ray tasks of a run (anytime cells, linear-probe rows, held-out diagnostics, plug-ins'
driver-side work) and joining the cluster. Each task requests its own resources outside any placement group.
"""

from __future__ import annotations

import os

import numpy as np
import ray

from components.config import Config
from components.data.masking import MlmMasker
from components.eval.heldout import heldout_diagnostics
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM
from components.pretrain.plugin import Tokens
from components.ray_env import apply_lean_ray_env, keep_task_workers
from components.run.cells import run_cell, run_probe_row

# Tasks request their own resources: a sweep trial's placement group must not capture them.
OUTSIDE_ANY_PLACEMENT_GROUP = "DEFAULT"


def init_ray(cfg: Config) -> None:
    """Join the cluster in `ray.address` / RAY_ADDRESS, or start a local instance."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    apply_lean_ray_env()
    if not address:  # a row's tasks (cells, probe, diagnostics) reuse the previous row's workers
        keep_task_workers(task_slots(cfg, os.cpu_count() or 1) + 1)
    ray.init(address=address, log_to_driver=True, configure_logging=False, logging_level=cfg.ray.log_level,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE":
                                       os.environ.get("HF_HUB_OFFLINE", "0")}} if not address else None)


def task_slots(cfg: Config, cpus: float) -> int:
    """How many cell-sized tasks run at once on `cpus` CPUs."""
    return int(cpus / cfg.finetune.cpus_per_cell + 1e-9)


def cell_threads(cfg: Config) -> int:
    """Torch threads of a cell-sized task: its CPU share rounded down, at least 1 (0.66 CPU -> 1)."""
    return int(max(1, cfg.finetune.cpus_per_cell))


@ray.remote
def diagnostics_task(cfg: Config, weights: dict, heldout: dict[str, np.ndarray], tokens: Tokens, threads: int) -> dict:
    import torch

    torch.set_num_threads(max(1, threads))
    model = MaskedLM(masked_lm_from_state(cfg.model.name, weights))
    masker = MlmMasker(tokens.vocab_size, tokens.mask_id, tokens.special_ids, tokens.pad_id, cfg.data.mask_prob)
    return {name: heldout_diagnostics(model, blocks, masker, tokens.pad_id, cfg.eval.anchor_ks,
                                      cfg.eval.anchor_positions, precision=cfg.finetune.precision)
            for name, blocks in heldout.items()}


@ray.remote
def probe_task(cfg, stage, weights, base_weights, plugin_state, fingerprint, threads, tasks):
    return run_probe_row(cfg, stage, weights, base_weights, plugin_state, fingerprint, threads, tasks)


@ray.remote
def cell_task(cfg, spec, weights, base_weights, plugin_state, threads):
    return run_cell(cfg, spec, weights, base_weights, plugin_state, threads)


@ray.remote
def call_task(fn, *args):
    """fn(*args) in a task (a plug-in's driver-side work, e.g. distillation's teacher logits)."""
    return fn(*args)
