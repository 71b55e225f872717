"""Stage-0 re-warm: it learns, it is shipped as bf16 with a checked fingerprint, the shipped copy
is found by its recipe key, and the default model uses the shipped weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.models.head_warmup import prepare_base_model, stage0_mode
from components.models.loading import load_tokenizer
from components.models.rewarm import RECIPE, WEIGHTS, file_sha256

REPO = REPO_ROOT
SHIPPED = REPO / "data" / "stage0" / "minilm-l6-rewarm"


def _tiny_cfg(tiny_model_dir: Path, shipped: Path):
    cfg = load_config([REPO / "pipelines/configs/default.yaml"], [
        f"model.name={tiny_model_dir}", "model.stage0=rewarm", "model.rewarm.max_steps=6",
        "model.rewarm.eval_every=3", "model.rewarm.batch_size=8", "model.rewarm.block_size=16",
        "model.rewarm.eval_blocks=16", f"model.rewarm.shipped_dir={shipped}", "model.rewarm.warmup_steps=1"])
    return cfg.model


def test_rewarm_learns_is_cached_and_found_when_shipped(tmp_path, tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model_cfg = _tiny_cfg(tiny_model_dir, tmp_path / "shipped")
    path, info = prepare_base_model(model_cfg, tok, tmp_path / "cache", seed=0)
    assert info["stage0"] == "rewarm" and info["source"] == "trained" and not info["cache_hit"]
    assert info["heldout_last"]["mlm_loss"] < info["heldout_first"]["mlm_loss"]
    entry = path.parent / "rewarm"
    recipe = json.loads((entry / RECIPE).read_text())
    assert recipe["sha256"] == file_sha256(entry / WEIGHTS) and recipe["steps"] == 6
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(entry / WEIGHTS)).values() if t.is_floating_point())
    # the stage-0 model is the bf16-rounded weights in fp32
    used = load_file(str(path))
    assert all(t.dtype == torch.float32 for t in used.values() if t.is_floating_point())
    w = used["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(w, w.to(torch.bfloat16).float())
    # a second call is a cache hit
    assert prepare_base_model(model_cfg, tok, tmp_path / "cache", seed=5)[1]["cache_hit"]
    # shipped: the same recipe in shipped_dir is used by a machine with an empty cache
    shutil.copytree(entry, tmp_path / "shipped" / "tiny-rewarm")
    path2, info2 = prepare_base_model(model_cfg, tok, tmp_path / "cache2", seed=0)
    assert info2["source"] == str(tmp_path / "shipped" / "tiny-rewarm") and info2["sha256"] == recipe["sha256"]
    assert all(torch.equal(used[k], t) for k, t in load_file(str(path2)).items())
    # another recipe (a different step budget) does not match the shipped copy: it trains
    other = replace(model_cfg, rewarm=replace(model_cfg.rewarm, max_steps=3))
    assert prepare_base_model(other, tok, tmp_path / "cache3", seed=0)[1]["source"] == "trained"


def test_a_corrupt_shipped_file_is_one_clear_error(tmp_path, tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model_cfg = _tiny_cfg(tiny_model_dir, tmp_path / "shipped")
    path, _ = prepare_base_model(model_cfg, tok, tmp_path / "cache", seed=0)
    shipped = tmp_path / "shipped" / "tiny-rewarm"
    shutil.copytree(path.parent / "rewarm", shipped)
    with open(shipped / WEIGHTS, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match="does not match its recipe"):
        prepare_base_model(model_cfg, tok, tmp_path / "cache2", seed=0)


def test_default_model_uses_the_shipped_rewarm(tmp_path):
    cfg = load_config([REPO / "pipelines/configs/default.yaml"], [])
    assert stage0_mode(cfg.model) == "rewarm"
    assert stage0_mode(replace(cfg.model, name="some/other-model")) == "head_warmup"
    recipe = json.loads((SHIPPED / RECIPE).read_text())
    assert recipe["sha256"] == file_sha256(SHIPPED / WEIGHTS)
    path, info = prepare_base_model(cfg.model, load_tokenizer(cfg.model.name), tmp_path, seed=0)
    assert info["source"] == str(SHIPPED) and info["key"] == recipe["key"] and not info["cache_hit"]
