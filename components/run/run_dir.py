"""The run directory: layout, resolved config, manifest. Every file is written atomically.

    config.yaml            resolved config (what `--config` accepts again)
    manifest.json          git sha, package versions, data/tokenizer fingerprints, seeds, order, hardware
    base.json              how the stage-0 model was made (MLM-head warm-up or not)
    stages/NN-<name>/      one checkpoint per stage (00-base = the stage-0 model)
    metrics/               per-step JSONL per stage, per-stage diagnostics JSONL
    cells/                 one JSON per anytime cell (stage, task, seed)
    experts/<task>/        row-0 fine-tuned models (when distillation uses them)
    anytime.json/.csv, anytime_heatmap.png, report.md
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.config import REPO_ROOT, Config, dump_yaml, stored_dict
from components.errors import InputError
from components.io import atomic_write_json, atomic_write_text

# The run's own files (all the results mirror copies): top-level outputs and layout folders.
OWN_FILES = ("config.yaml", "manifest.json", "base.json", "anytime.json", "anytime.csv", "anytime_heatmap.png",
             "report.md", "wall_time.json", "wandb_id.txt")
OWN_DIRS = ("stages", "metrics", "cells", "experts", "plots", "wandb")
PACKAGES = ("torch", "transformers", "ray", "datasets", "pyarrow", "wandb", "numpy", "safetensors")
# Keys that may change between invocations on the same run directory.
VOLATILE = {("tracking",), ("ray",), ("eval", "asynchronous"), ("finetune", "cpus_per_cell"),
            ("finetune", "gpus_per_cell"), ("finetune", "max_retries"), ("pretrain", "max_failures")}


@dataclass
class RunDir:
    root: Path
    shared_stages: Path | None = None   # pre-training stages shared by sweep trials (read + resume there)

    @property
    def stages_root(self) -> Path:
        return self.shared_stages or self.root

    def stage(self, index: int, name: str) -> Path:
        return self.stages_root / "stages" / f"{index:02d}-{name}"

    @property
    def base_info(self) -> Path:
        return self.stages_root / "base.json"

    def cell(self, stage: int, task: str, seed: int) -> Path:
        return self.root / "cells" / f"s{stage:02d}-{task}-seed{seed}.json"

    def probe(self, stage: int, task: str) -> Path:
        return self.root / "probes" / f"s{stage:02d}-{task}.json"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / name

    def own_files(self):
        """(relative path, path) of every file of the run's own layout (what the results mirror
        copies): the top-level outputs and the layout's folders, nothing else in the directory."""
        for name in OWN_FILES:
            if (self.root / name).is_file():
                yield name, self.root / name
        for folder in OWN_DIRS:
            for path in sorted((self.root / folder).rglob("*")):
                rel = path.relative_to(self.root)
                if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                    yield rel.as_posix(), path

    @property
    def storage_path(self) -> Path:
        return self.stages_root / "ray_storage"


def _strip(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        key = prefix + (k,)
        if key in VOLATILE:
            continue
        out[k] = _strip(v, key) if isinstance(v, dict) else v
    return out


def check_same_run(run: RunDir, cfg: Config) -> None:
    """A run directory belongs to one config: refuse to mix results of another one."""
    saved = run.root / "config.yaml"
    if not saved.is_file():
        return
    old = _strip(yaml.safe_load(saved.read_text()))
    new = _strip(stored_dict(cfg))  # as stored: project-relative inputs, redacted URIs
    if old != new:
        diff = sorted(_diff(old, new))[:5]
        raise InputError(f"{run.root}: holds a run with a different config (changed: {', '.join(diff)}); "
                         "use a new --run-dir")


def _diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set(a) | set(b)
    out: set[str] = set()
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(f"{prefix}{k}")
    return out


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def hardware(cluster_resources: dict) -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "driver_cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cluster": {k: v for k, v in cluster_resources.items() if k in ("CPU", "GPU", "memory")},
    }


def write_config_and_manifest(run: RunDir, cfg: Config, manifest: dict) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.root / "config.yaml", dump_yaml(cfg))
    atomic_write_json(run.root / "manifest.json", manifest)
