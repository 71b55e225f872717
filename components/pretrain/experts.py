"""The expert file format (UEGP / MoEGP teachers, docs/methods.md) and its I/O.

An expert is a fine-tuned `TaskModel` (the row-0 anytime models double as experts). On disk
it is one directory:

    <dir>/model.safetensors   the full TaskModel state dict (safetensors.torch.save_model,
                              which de-duplicates tied weights); never a pickle
    <dir>/expert.json         meta: format, task, label_names, is_regression, pooling,
                              num_labels, model (name/path the backbone was built from),
                              fingerprint = sha256 of the model.safetensors bytes, plus any
                              extra keys the caller adds (e.g. calibration settings)

The directory is written atomically: both files go to a staging directory next to `dir`, which
then replaces `dir` (components.checkpoint.publish_dir).
Loading needs a builder from the caller, `build_task_model(meta) -> TaskModel`, that makes
an untrained model of the right shape; the weights are then loaded strictly from safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from components.checkpoint import publish_dir, staging_dir
from components.errors import InputError
from components.io import atomic_write_json, sha256_file
from components.models.task_model import TaskModel

FORMAT = 1
WEIGHTS = "model.safetensors"
META = "expert.json"
REQUIRED_META = ("task", "num_labels", "is_regression", "pooling")


def _check_meta(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise InputError(f"{where}: expert meta must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(f"{where}: expert meta lacks {', '.join(missing)}")
    if not isinstance(meta["task"], str) or not meta["task"]:
        raise InputError(f"{where}: 'task' must be a non-empty string")
    if isinstance(meta["num_labels"], bool) or not isinstance(meta["num_labels"], int) or meta["num_labels"] < 1:
        raise InputError(f"{where}: 'num_labels' must be a positive integer, got {meta['num_labels']!r}")
    if not isinstance(meta["is_regression"], bool):
        raise InputError(f"{where}: 'is_regression' must be true/false, got {meta['is_regression']!r}")
    if meta["pooling"] not in ("cls", "mask", "mean"):
        raise InputError(f"{where}: 'pooling' must be 'cls', 'mask' or 'mean', got {meta['pooling']!r}")
    if not isinstance(meta.get("template", False), bool):
        raise InputError(f"{where}: 'template' must be true/false, got {meta['template']!r}")
    return meta


def save_expert(dir: Path | str, task_model: TaskModel, meta: dict) -> Path:
    """Write `task_model` + `meta` as an expert directory at `dir`, atomically; return `dir`.

    `meta` needs task, num_labels, is_regression, pooling (label_names and model are
    recommended; `template`: fine-tuned on inputs in the default template, default pooling == "mask"); `format` and `fingerprint` are filled in here. `num_labels` must match the
    model's head.
    """
    dir = Path(dir)
    meta = _check_meta(dict(meta), f"save_expert({dir})")
    if task_model.head.out_features != meta["num_labels"]:
        raise InputError(
            f"save_expert({dir}): meta num_labels={meta['num_labels']} but the model head has "
            f"{task_model.head.out_features} outputs"
        )
    tmp = staging_dir(dir)
    try:
        save_model(task_model, str(tmp / WEIGHTS))
        with open(tmp / WEIGHTS, "rb+") as f:
            os.fsync(f.fileno())
        meta.setdefault("label_names", None)
        meta.setdefault("model", None)
        meta["format"] = FORMAT
        meta["fingerprint"] = sha256_file(tmp / WEIGHTS)
        atomic_write_json(tmp / META, meta)
        publish_dir(tmp, dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dir


def read_expert_meta(dir: Path | str) -> dict:
    """The validated `expert.json` of expert directory `dir` (InputError naming the path)."""
    dir = Path(dir)
    if not dir.is_dir():
        raise InputError(f"expert directory not found: {dir}")
    path = dir / META
    if not path.is_file():
        raise InputError(f"expert meta not found: {path}")
    if not (dir / WEIGHTS).is_file():
        raise InputError(f"expert weights not found: {dir / WEIGHTS}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    return _check_meta(meta, str(path))


def expert_fingerprint(dir: Path | str) -> str:
    """sha256 (hex) of the expert's `model.safetensors` bytes, computed from the file now."""
    path = Path(dir) / WEIGHTS
    if not path.is_file():
        raise InputError(f"expert weights not found: {path}")
    return sha256_file(path)


def load_expert(
    dir: Path | str, build_task_model: Callable[[dict], TaskModel], verify: bool = True
) -> tuple[TaskModel, dict]:
    """Build a TaskModel with `build_task_model(meta)`, load the weights strictly from
    safetensors, put it in eval mode; return (model, meta).

    With `verify` the file's sha256 must equal the recorded fingerprint (a weights file
    changed or truncated after saving is an InputError).
    """
    dir = Path(dir)
    meta = read_expert_meta(dir)
    weights = dir / WEIGHTS
    if verify:
        actual = sha256_file(weights)
        if meta.get("fingerprint") != actual:
            raise InputError(
                f"{weights}: sha256 {actual[:12]}... does not match the fingerprint in {dir / META} "
                "(the file changed after it was saved)"
            )
    model = build_task_model(meta)
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise InputError(f"{weights}: cannot load into the built TaskModel ({str(e).splitlines()[0][:300]})") from None
    if model.head.out_features != meta["num_labels"]:
        raise InputError(f"{weights}: head has {model.head.out_features} outputs, meta says {meta['num_labels']}")
    model.eval()
    return model, meta


def expert_head(dir: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [C, d], bias [C]) of the expert's task head, read from safetensors alone
    (for `ExpertKDPlugin.warm_start_from`)."""
    path = Path(dir) / WEIGHTS
    if not path.is_file():
        raise InputError(f"expert weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if "head.weight" not in keys or "head.bias" not in keys:
                raise InputError(f"{path}: no head.weight / head.bias (not a TaskModel expert)")
            return f.get_tensor("head.weight"), f.get_tensor("head.bias")
    except SafetensorError as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
