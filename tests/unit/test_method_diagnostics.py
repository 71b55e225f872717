"""benchmarks/method_diagnostics.py: the HPrompt / CoCa / expert-input probes on tiny models."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

from components.config import REPO_ROOT, CocaConfig
from components.models.task_model import TaskBatch, TaskModel
from tests.unit.test_coca import minilm_scaled
from tests.unit.test_hprompt import D, batch, plugin_for, tiny

REPO = REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("method_diagnostics", REPO / "benchmarks/method_diagnostics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hprompt_probe():
    diag = _script()
    base = tiny()
    plugin = plugin_for(base)
    b = batch(pad_from=None)
    masked = b["input_ids"].clone()
    masked[:, 2] = 4  # the "mask" token of the probe
    plugin.memory.update(torch.randn(8, D))
    plugin.memory.add_prototype("a", torch.randn(D))
    out = diag.hprompt_probe(plugin, copy.deepcopy(base), masked, b["input_ids"], b["attention_mask"])
    assert 0 < out["prompt_to_token_norm"] < 10
    for k in ("query_cos_masked_clean", "cos_own_virtual", "cos_prompt_noprompt", "cos_to_stage0", "cos_own_prototype[a]"):
        assert -1.0 <= out[k] <= 1.0 + 1e-6, k
    assert out["query_cos_masked_clean"] < 1.0 and out["query_cos_visible_clean"] > out["query_cos_masked_clean"]
    assert out["neg_grad_share"] > 0.0  # the negative branch does reach the hypernetwork


def test_coca_probe_shows_the_absolute_ball_is_a_no_op_and_the_per_token_one_is_not():
    diag = _script()
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 10, dtype=torch.long)
    b = TaskBatch(torch.randint(1, 50, (4, 10), generator=g), mask, torch.tensor([0, 1, 2, 1]),
                  mask_pos=torch.full((4,), 9))
    first = minilm_scaled(cfg=CocaConfig(radius="absolute", epsilon=1e-3, step_size=1e-3, noise_std=1e-5))
    absolute = diag.coca_probe(first, first.plugins[0], b)
    default = minilm_scaled(cfg=CocaConfig())
    per_token = diag.coca_probe(default, default.plugins[0], b)
    assert absolute["delta_to_example_norm"] < 1e-3 and per_token["delta_to_example_norm"] == pytest.approx(0.05, rel=1e-3)
    assert absolute["adv_gain"] < 0.01 * absolute["D_clean"] < per_token["adv_gain"]
    for out in (absolute, per_token):
        assert out["token_norm"] == pytest.approx(1.1, rel=0.3)  # the table's mean is 1.1; the batch's tokens vary
        assert min(out["grad_task"], out["grad_predefined"], out["grad_consistency"]) > 0
        assert 0 < out["clip_factor"] <= 1 and 0 < out["task_share_of_total"] <= 1
        assert 0 < out["pre_majority"] <= 1 and 0 <= out["pre_entropy"] <= 1


def test_expert_view_probe():
    diag = _script()
    model = TaskModel(tiny().eval(), 3, "mask")
    ids = torch.randint(5, 60, (6, 10), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3
    templated = TaskBatch(ids.clone(), torch.ones_like(ids), torch.zeros(6, dtype=torch.long),
                          mask_pos=torch.full((6,), 8))
    templated.input_ids[:, 8] = 4
    plain = TaskBatch(ids, torch.ones_like(ids), torch.zeros(6, dtype=torch.long))
    same = diag.expert_view_probe(model, templated, templated, pad_id=1, mask_id=4)
    assert same["slot_cos_same_text"] == pytest.approx(1.0, abs=1e-5) and same["agreement"] == 1.0
    out = diag.expert_view_probe(model, templated, plain, pad_id=1, mask_id=4)
    assert out["slot_cos_same_text"] <= 1.0 and -1 <= out["slot_cos_between_texts"] <= 1
    assert not math.isnan(out["majority_cache_view"])
