"""The shipped Ray cluster launcher config and job runtime env are valid (offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import REPO_ROOT
from components.cluster import validate_cluster_config
from components.errors import InputError

ROOT = REPO_ROOT
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
RUNTIME_ENV_YAML = ROOT / "ray_runtime_env.yaml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, config: dict) -> Path:
    out = tmp_path / "cluster.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def test_shipped_cluster_config_passes_ray_validation():
    config = validate_cluster_config(CLUSTER_YAML)
    assert config["cluster_name"] == "anytime-cpt"
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing is trained on the head
    gpu = nodes["ray.worker.gpu"]
    assert gpu["resources"] == {"CPU": 4, "GPU": 1}
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 4)
    assert config["file_mounts"]["~/anytime-cpt"] == "."
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in start and "--include-dashboard=false" not in start
    assert "RAY_AUTH_MODE=token" in start
    assert any("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"])


def test_typo_in_top_level_key_is_rejected(tmp_path):
    config = _load(CLUSTER_YAML)
    config["max_workerz"] = config.pop("max_workers")
    with pytest.raises(InputError, match=r"max_workerz.*unexpected"):
        validate_cluster_config(_write(tmp_path, config))


def test_typo_in_node_type_key_is_rejected(tmp_path):
    config = _load(CLUSTER_YAML)
    worker = config["available_node_types"]["ray.worker.gpu"]
    worker["min_workerz"] = worker.pop("min_workers")
    with pytest.raises(InputError, match=r"ray\.worker\.gpu.*min_workerz"):
        validate_cluster_config(_write(tmp_path, config))


def test_cross_field_errors_are_rejected(tmp_path):
    config = _load(CLUSTER_YAML)
    config["head_node_type"] = "ray.head.missing"
    with pytest.raises(InputError, match="head_node_type"):
        validate_cluster_config(_write(tmp_path, config))


def test_cli_reports_ok_and_errors(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "components.cluster", str(CLUSTER_YAML)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK:")

    config = _load(CLUSTER_YAML)
    config["max_workerz"] = config.pop("max_workers")
    bad = subprocess.run(
        [sys.executable, "-m", "components.cluster", str(_write(tmp_path, config))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_workerz" in errors[0]
    assert "Traceback" not in bad.stderr


def test_runtime_env_yaml_is_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = _load(RUNTIME_ENV_YAML)
    assert set(env) <= {"excludes", "env_vars"}  # RuntimeEnv accepts unknown keys silently
    RuntimeEnv(working_dir=str(ROOT), **env)  # Ray's own type checks
    excludes = {pattern.strip("/") for pattern in env["excludes"]}
    assert {".venv", "runs", ".cache", "wandb", ".git", "__pycache__", "*.egg-info"} <= excludes
    assert env["env_vars"] == {
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def test_runtime_env_excludes_match_like_ray(tmp_path):
    # Ray's matcher for `excludes` (private, pinned Ray): gitignore patterns on paths
    # relative to the working dir, applied to directories as well as files.
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(tmp_path, _load(RUNTIME_ENV_YAML)["excludes"])
    for path in (".venv", ".venv/lib/x.py", "runs", "runs/r1/stage_0/ckpt.pt", "wandb",
                 ".git", "components/__pycache__/a.pyc", "anytime_cpt.egg-info"):
        assert excluded(tmp_path / path), path
    for path in ("components/cluster.py", "pipelines/continual.py", "data/README.md",
                 "ray_cluster.yaml"):
        assert not excluded(tmp_path / path), path


def test_working_dir_package_stays_small(tmp_path):
    # Zip the repository exactly as `ray job submit --working-dir .` would (excludes only,
    # .gitignore not even applied) and keep it under the documented 100 MiB working_dir
    # limit (Ray 2.60 enforces 512 MiB).
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "working_dir.zip"
    create_package(str(ROOT), package, include_gitignore=False,
                   excludes=_load(RUNTIME_ENV_YAML)["excludes"])
    assert package.stat().st_size < 100 * 1024 * 1024
