"""Anytime cells: one fine-tune per (stage, task, seed), each a Ray task with explicit
resources. The driver writes one result file per cell atomically; a re-run skips finished
cells; a cell whose process dies is retried by Ray (`max_retries`) and, being seeded, gives
the same result as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from components.config import Config
from components.data.domains import read_task, resolve_domain
from components.data.task_encoding import default_template, encode_task
from components.eval.probe import probe_task
from components.finetune.loop import finetune
from components.methods.registry import build_task_model, templated
from components.models.task_model import TaskInfo
from components.models.loading import load_tokenizer
from components.models.precision import resolve_precision

@dataclass
class CellSpec:
    stage: int
    task: str
    seed: int
    checkpoint_fingerprint: str
    keep_model: bool = False   # return the fine-tuned weights (row 0, for plug-ins that keep them)
    fault_marker: str | None = None  # test-only: die once (see components.run.faults)


def subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """The same example subset in every row (seeded by the run seed, not the cell seed)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _take(data: dict[str, torch.Tensor], rows: np.ndarray) -> dict[str, torch.Tensor]:
    idx = torch.from_numpy(rows)
    return {k: v[idx] for k, v in data.items()}


def _maybe_fail(spec: CellSpec) -> None:
    """Test-only: the cell's process dies once when `spec.fault_marker` is set."""
    if spec.fault_marker and not Path(spec.fault_marker).exists():
        Path(spec.fault_marker).write_text("injected")
        os._exit(1)


def task_data(cfg: Config, task: str, tokenizer, limits: dict[str, int | None]
              ) -> tuple[TaskInfo, dict[str, dict[str, torch.Tensor]], bool]:
    """The task's encoded train / dev / test splits, each capped at `limits[split]` examples (the
    same seeded subset in every row); its TaskInfo; whether it is a regression task."""
    index = [d.name for d in cfg.domains].index(task)
    domain = resolve_domain(cfg.domains[index])
    splits = {s: read_task(domain, s) for s in ("train", "dev", "test")}
    train_task = splits["train"]
    info = TaskInfo(task, None if train_task.is_regression else train_task.label_names, domain.verbalizers)
    template = default_template(tokenizer, train_task.texts_b is not None) if templated(cfg) else None
    encoded = {s: encode_task(t, tokenizer, cfg.finetune.max_length, template) for s, t in splits.items()}
    data = {s: _take(e, subsample(len(e["labels"]), limits[s], cfg.seed)) for s, e in encoded.items()}
    return info, data, train_task.is_regression


def run_probe_row(cfg: Config, stage: int, weights: dict, base_weights: dict | None, plugin_state: dict | None,
                  fingerprint: str, threads: int, tasks: list[str] | None = None) -> list[dict]:
    """Linear probes of the stage's frozen model on every task, or on `tasks` (components/eval/probe.py)."""
    torch.set_num_threads(max(1, threads))
    tokenizer = load_tokenizer(cfg.model.name)
    cap = cfg.eval.probe_max_examples
    device = torch.device("cuda" if cfg.finetune.gpus_per_cell > 0 and torch.cuda.is_available() else "cpu")
    records = []
    for task in tasks or [d.name for d in cfg.domains]:
        info, data, regression = task_data(cfg, task, tokenizer, {"train": cap, "dev": cap, "test": cap})
        model, _, _ = build_task_model(cfg, weights, info, tokenizer, base_weights, plugin_state)
        result = probe_task(model, data, regression, 2 * cfg.finetune.batch_size, device, cfg.finetune.precision)
        records.append({"stage": stage, "task": task, "seed": 0, "checkpoint_fingerprint": fingerprint,
                        "pooling": model.pooling, "label_names": info.label_names, **result})
    return records


def run_cell(cfg: Config, spec: CellSpec, weights: dict, base_weights: dict | None,
             plugin_state: dict | None, threads: int) -> dict:
    """Fine-tune the stage's model on one task with one seed; return the cell's record."""
    torch.set_num_threads(max(1, threads))
    _maybe_fail(spec)
    start = time.time()
    tokenizer = load_tokenizer(cfg.model.name)
    f = cfg.finetune
    info, data, regression = task_data(cfg, spec.task, tokenizer, {
        "train": f.max_train_examples, "dev": f.max_eval_examples, "test": f.max_test_examples})
    torch.manual_seed(spec.seed)  # head initialisation: a function of the cell's seed, not the process's history
    model, plugins, notes = build_task_model(cfg, weights, info, tokenizer, base_weights, plugin_state)
    device = torch.device("cuda" if f.gpus_per_cell > 0 and torch.cuda.is_available() else "cpu")
    result = finetune(model, plugins, data["train"], data["dev"], data["test"], f, spec.seed, device,
                      regression=regression, keep_best_state=spec.keep_model)
    record = {
        "stage": spec.stage, "task": spec.task, "seed": spec.seed,
        "checkpoint_fingerprint": spec.checkpoint_fingerprint,
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "test_predicted_counts": result.test_predicted_counts,
        "test_label_counts": result.test_label_counts,
        "best_dev": result.best_dev,
        "dev_curve": result.dev_curve,
        "steps": result.steps,
        "extra_forwards": result.extra_forwards,
        "extra_backwards": result.extra_backwards,
        "examples": {s: int(len(d["labels"])) for s, d in data.items()},
        "label_names": info.label_names,
        "pooling": model.pooling,
        "plugins": [p.name for p in plugins],  # the fine-tuning plug-ins that ran (e.g. prompts, coca, repcali)
        "precision": resolve_precision(f.precision, device),
        "notes": notes,
        "hyperparameters": {k: v for k, v in asdict(f).items() if k not in ("seeds",)},
        "wall_time_s": round(time.time() - start, 2),
    }
    if spec.keep_model:
        record["model_state"] = result.best_state
    return record
