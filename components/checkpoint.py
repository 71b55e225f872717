"""Checkpoint files without pickle: tensors in safetensors, structure and scalars in JSON.

A state tree (e.g. an optimizer state dict: nested dicts/lists of tensors and numbers) is
flattened to `{path: tensor}` for safetensors plus a JSON skeleton in which every tensor is
replaced by a `{"__tensor__": path}` reference, so loading never executes code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    return {"__int__": k} if isinstance(k, int) else k


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {(k["__int__"] if isinstance(k, dict) else k): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_tree(obj: Any, directory: Path, name: str) -> None:
    """Write `name.safetensors` + `name.json` for a nested state tree."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(obj, name, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(directory: Path, name: str) -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return _unflatten(json.loads((directory / f"{name}.json").read_text()), tensors)


def save_module(module: nn.Module, path: Path) -> None:
    """A module's state in safetensors (shared/tied tensors handled)."""
    save_model(module, str(path))


def load_module(module: nn.Module, path: Path, strict: bool = True) -> None:
    missing, unexpected = load_model(module, str(path), strict=strict)
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path}: missing {missing[:5]} unexpected {unexpected[:5]}")


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically replace directory `final` by the finished directory `tmp` (same filesystem)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".old-{final.name}-"))
        os.replace(final, trash / final.name)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def staging_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
