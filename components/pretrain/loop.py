"""The one continual pre-training loop (every method plugs loss terms into it).

Per optimizer step s, with gradient accumulation over micro-batches g = s * A + a:

    batch_g   = rows of this worker's shard chosen by a per-epoch permutation (seed, stage, epoch)
    mask_g    = dynamic 80/10/10 MLM masking with a generator seeded by (seed, stage, g, rank)
    L_g       = L_MLM + sum of the plug-ins' weighted terms
    theta    <- AdamW(theta, clip(sum_a grad L_g / A))

Every random draw is a function of (seed, stage, step, rank), so the data position (the step)
restores data order, masking and dropout exactly on resume; on CPU a resumed run reproduces an
uninterrupted one.

The loop runs inside a Ray Train worker (`RaySession`) or in-process (`LocalSession`, used by
benchmarks and unit tests); it talks to its host only through the `Session` interface.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from components.checkpoint import load_module, load_tree, save_module, save_tree
from components.config import Config
from components.data.masking import MlmMasker
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM
from components.models.compile import CompiledStep, resolve_compile
from components.models.precision import autocast_for, resolve_precision
from components.models.schedule import make_adamw, make_scheduler
from components.pretrain.plugin import PretrainPlugin, StageInfo, Tokens
from components.seeding import mix_seed


@dataclass
class StageSpec:
    """Everything a worker needs for one stage; plain data, shipped through Ray's object store."""

    config: Config
    stage: StageInfo
    tokens: Tokens
    init_weights: dict[str, torch.Tensor]        # the previous stage's model
    train_blocks: np.ndarray                     # [n, block_size] int32 clean blocks (whole domain)
    total_steps: int
    payload: dict[str, dict] = field(default_factory=dict)  # plug-in name -> its prepare_stage result
    prev_plugin_state: dict[str, torch.Tensor] | None = None
    prev_plugin_meta: list[dict] | None = None
    fault: tuple[int, str] | None = None         # test-only: (step, marker file) at which a worker dies once
    stop_at: int | None = None                   # run only up to this step (checkpointed) of a total_steps schedule


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def restore(self) -> Path | None: ...

    def report(self, metrics: dict, checkpoint: Path | None) -> None: ...

    def wrap(self, module: nn.Module, find_unused: bool) -> nn.Module: ...

    def scratch_dir(self) -> Path: ...


class MlmObjective(nn.Module):
    """Model + plug-ins; forward returns the named loss terms of one micro-batch."""

    def __init__(self, model: MaskedLM, plugins: list[PretrainPlugin]):
        super().__init__()
        self.model = model
        self.plugins = nn.ModuleList(plugins)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctx: dict = {}
        prefixes = [p.prefix(self.model, batch, ctx) for p in self.plugins]
        prefixes = [p for p in prefixes if p is not None]
        prefix = torch.cat(prefixes, dim=1) if prefixes else None
        hidden = self.model.encode(self.model.embed(batch["input_ids"]), batch["attention_mask"], prefix)
        terms = {"mlm": self.model.mlm_loss(hidden, batch["labels"])}
        for p in self.plugins:
            for k, v in p.loss_terms(self.model, batch, hidden, ctx).items():
                terms[f"{p.name}/{k}"] = v
        return terms


def batch_rows(g: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of micro-batch g: epoch e = g // (n // B) uses permutation perm(seed, e)."""
    per_epoch = max(1, n // batch_size)
    epoch, slot = divmod(g, per_epoch)
    perm = np.random.default_rng(mix_seed(seed, epoch)).permutation(n)
    return perm[slot * batch_size:(slot + 1) * batch_size]


def steps_for(cfg: Config, world_size: int) -> int:
    """Optimizer steps of a stage: max_steps, capped by the token budget when one is set."""
    p = cfg.pretrain
    if p.max_tokens is None:
        return p.max_steps
    per_step = p.batch_size * p.grad_accum * max(1, world_size) * cfg.model.block_size
    return max(1, min(p.max_steps, math.ceil(p.max_tokens / per_step)))


def save_checkpoint(directory: Path, objective: MlmObjective, optimizer, scheduler, step: int, finished: bool) -> None:
    save_module(objective.model.hf, directory / "model.safetensors")
    save_tree({k: v for k, v in objective.plugins.state_dict().items()}, directory, "plugins")
    save_tree(optimizer.state_dict(), directory, "optimizer")
    save_tree(scheduler.state_dict(), directory, "scheduler")
    meta = {"step": step, "finished": finished, "plugin_meta": [p.meta() for p in objective.plugins]}
    (directory / "meta.json").write_text(json.dumps(meta))


def load_checkpoint(directory: Path, objective: MlmObjective, optimizer, scheduler) -> dict:
    load_module(objective.model.hf, directory / "model.safetensors")
    objective.plugins.load_state_dict(load_tree(directory, "plugins"))
    meta = json.loads((directory / "meta.json").read_text())
    for p, m in zip(objective.plugins, meta["plugin_meta"]):
        p.load_meta(m)
    optimizer.load_state_dict(load_tree(directory, "optimizer"))
    scheduler.load_state_dict(load_tree(directory, "scheduler"))
    return meta


def maybe_inject_fault(spec: StageSpec, step: int, session: Session) -> None:
    """Test-only: the last worker dies once at `spec.fault = (step, marker file)`."""
    if spec.fault is None or spec.fault[0] != step or session.rank != session.world_size - 1:
        return
    marker = Path(spec.fault[1])
    if not marker.exists():
        marker.write_text("injected")
        os._exit(1)


PluginBuilder = Callable[["StageSpec", MaskedLM], list[PretrainPlugin]]


def run_stage(spec: StageSpec, session: Session, build_plugins: PluginBuilder) -> None:
    """Train one domain stage; report metrics and checkpoints through `session`. `build_plugins`
    makes the stage's method plug-ins (`components.methods.registry.build_pretrain_plugins`)."""
    cfg, stage, p = spec.config, spec.stage, spec.config.pretrain
    device = session.device
    model = MaskedLM(masked_lm_from_state(cfg.model.name, spec.init_weights))
    seed = mix_seed(cfg.seed, stage.index)
    torch.manual_seed(mix_seed(seed, 2))  # plug-in initialisation: a function of (seed, stage), not of the process's history
    plugins = build_plugins(spec, model)
    objective = MlmObjective(model, plugins).to(device)
    optimizer = make_adamw(list(objective.named_parameters()), p.lr, p.weight_decay)
    total = spec.total_steps
    scheduler = make_scheduler(optimizer, total, p.warmup_ratio, p.schedule)
    start, finished = 0, False
    restored = session.restore()
    if restored is not None:
        meta = load_checkpoint(restored, objective, optimizer, scheduler)
        start, finished = meta["step"], meta["finished"]
    # The driver says, from the first report, whether the stage resumed (`resumed_from`).
    for plugin in plugins:
        plugin.begin_stage(stage, model)

    shard = spec.train_blocks[session.rank::session.world_size]
    masker = MlmMasker(spec.tokens.vocab_size, spec.tokens.mask_id, spec.tokens.special_ids,
                       spec.tokens.pad_id, cfg.data.mask_prob)
    precision = resolve_precision(p.precision, device)
    trained = session.wrap(objective, find_unused=bool(plugins))
    runner = CompiledStep(trained, resolve_compile(p.compile, device, total), f"stage {stage.index} pre-training step",
                          dynamic=True)  # the masked-only head sees a different number of rows every step
    objective.train()

    def accumulate(module: nn.Module, step: int) -> tuple[dict[str, float], int]:
        """Forward and backward of the step's grad_accum micro-batches: (mean loss terms, tokens)."""
        sums: dict[str, float] = {}
        count = 0
        for a in range(p.grad_accum):
            g = step * p.grad_accum + a
            rows = batch_rows(g, len(shard), p.batch_size, seed)
            ids = torch.from_numpy(shard[rows].astype(np.int64))
            masked, labels = masker(ids, torch.Generator().manual_seed(mix_seed(seed, g, session.rank)))
            attention = (ids != spec.tokens.pad_id).long()
            rows = torch.from_numpy(rows * session.world_size + session.rank)  # index into the whole domain
            batch = {"input_ids": masked.to(device), "attention_mask": attention.to(device),
                     "labels": labels.to(device), "block_index": rows.to(device)}
            torch.manual_seed(mix_seed(seed, g, session.rank, 1))  # dropout
            sync = a == p.grad_accum - 1 or not hasattr(trained, "no_sync")
            with (contextlib.nullcontext() if sync else trained.no_sync()), autocast_for(device, precision):
                terms = module(batch)
                loss = sum(terms.values()) / p.grad_accum
            loss.backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / p.grad_accum
            count += int(attention.sum()) * session.world_size
        return sums, count

    t0, tokens = time.perf_counter(), 0
    stop = min(total, spec.stop_at or total)
    for step in range(start, stop if not finished else start):
        maybe_inject_fault(spec, step, session)
        sums, count = runner(lambda module, s=step: accumulate(module, s), lambda: optimizer.zero_grad(set_to_none=True))
        tokens += count
        grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), p.grad_clip if p.grad_clip > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        elapsed = time.perf_counter() - t0
        metrics = {"stage": stage.index, "step": done, "total_steps": total, "resumed_from": start,
                   "loss": sum(sums.values()),
                   "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "tokens": tokens, "elapsed_s": elapsed, "bf16": int(precision == "bf16"),
                   "compiled": int(runner.active),
                   "tokens_per_s": tokens / max(elapsed, 1e-9),
                   **{f"loss/{k}": v for k, v in sums.items()}}
        if done == total:
            clean = shard[:p.end_stage_blocks]
            for plugin in plugins:
                plugin.end_stage(stage, model, torch.from_numpy(clean.astype(np.int64)),
                                 torch.from_numpy((clean != spec.tokens.pad_id).astype(np.int64)))
        if done % p.checkpoint_every == 0 or done in (total, stop):
            session.report(metrics, _write_checkpoint(session, objective, optimizer, scheduler, done, done == total))
        elif done % p.log_every == 0:
            session.report(metrics, None)


def _write_checkpoint(session: Session, objective, optimizer, scheduler, step: int, finished: bool) -> Path | None:
    if session.rank != 0:
        return None
    directory = session.scratch_dir()
    save_checkpoint(directory, objective, optimizer, scheduler, step, finished)
    return directory


class LocalSession:
    """Run a stage in-process: one worker, checkpoints kept in `root`."""

    def __init__(self, root: Path, device: str = "cpu"):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.root = root
        self.metrics: list[dict] = []
        self.checkpoints: list[Path] = []

    def restore(self) -> Path | None:
        done = sorted(self.root.glob("checkpoint_*"))
        return done[-1] if done else None

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        self.metrics.append(metrics)
        if checkpoint is not None:
            final = self.root / f"checkpoint_{metrics['step']:08d}"
            checkpoint.rename(final)
            self.checkpoints.append(final)

    def wrap(self, module: nn.Module, find_unused: bool) -> nn.Module:
        return module

    def scratch_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix=".ckpt-"))
