"""The one pre-training loop, in-process (LocalSession): masked-only MLM loss, determinism,
resume from a checkpoint, plug-ins off = NCL exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from components.config import REPO_ROOT, load_config
from components.methods.registry import build_pretrain_plugins
from components.models.loading import load_masked_lm
from components.models.masked_lm import MaskedLM
from components.models.schedule import lr_factor, make_adamw
from components.pretrain.loop import LocalSession, batch_rows, run_stage, steps_for
from tests.helpers.stage import final_weights, make_spec

REPO = REPO_ROOT


def test_masked_only_loss_equals_stock_head_loss(tiny_model_dir):
    hf, _ = load_masked_lm(str(tiny_model_dir))
    hf.eval()
    ids = torch.randint(1000, 2000, (3, 20))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    labels[1, 7] = ids[1, 7]
    mask = torch.ones_like(ids)
    stock = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours = MaskedLM(hf)
    hidden = ours.encode(ours.embed(ids), mask)
    assert torch.allclose(ours.mlm_loss(hidden, labels), stock, atol=1e-6)


def test_lr_schedule_shapes():
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_batch_rows_cover_an_epoch_without_repeats():
    rows = np.concatenate([batch_rows(g, 40, 8, seed=3) for g in range(5)])
    assert sorted(rows.tolist()) == list(range(40))
    assert not np.array_equal(batch_rows(0, 40, 8, 3), batch_rows(5, 40, 8, 3))  # next epoch reshuffles


def test_token_budget_caps_steps(tiny_model_dir):
    cfg = load_config([REPO / "pipelines/configs/default.yaml"], ["pretrain.max_tokens=10000"])
    assert steps_for(cfg, 1) == 10  # ceil(10000 / (16 * 1 * 64))
    assert steps_for(cfg, 2) == 5


def test_stage_trains_reports_and_is_deterministic(tmp_path, tiny_model_dir):
    spec = make_spec(tiny_model_dir)
    a, b = LocalSession(tmp_path / "a"), LocalSession(tmp_path / "b")
    run_stage(spec, a, build_pretrain_plugins)
    run_stage(spec, b, build_pretrain_plugins)
    assert [m["step"] for m in a.metrics] == [1, 2, 3, 4, 5, 6]
    assert len(a.checkpoints) == 2 and a.metrics[-1]["loss/mlm"] > 0
    wa, wb = final_weights(a, tiny_model_dir), final_weights(b, tiny_model_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    init = spec.init_weights
    assert any(not torch.equal(wa[k], init[k]) for k in init)  # it did train


def test_hprompt_stage_is_deterministic_whatever_ran_before(tmp_path, tiny_model_dir):
    """The hypernetwork's initialisation is a function of (seed, stage): two runs of the same
    stage, with other random draws in between, end with the same weights."""
    spec = make_spec(tiny_model_dir, ["methods.hprompt.enabled=true"])
    spec.payload = {"hprompt": {"base_weights": spec.init_weights}}
    a, b = LocalSession(tmp_path / "a"), LocalSession(tmp_path / "b")
    run_stage(spec, a, build_pretrain_plugins)
    torch.rand(1000)  # a process's history (earlier cells, other stages) must not matter
    run_stage(spec, b, build_pretrain_plugins)
    assert [m["loss/mlm"] for m in a.metrics] == [m["loss/mlm"] for m in b.metrics]
    wa, wb = final_weights(a, tiny_model_dir), final_weights(b, tiny_model_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    spec = make_spec(tiny_model_dir)
    full = LocalSession(tmp_path / "full")
    run_stage(spec, full, build_pretrain_plugins)
    # interrupted after the step-3 checkpoint: drop the later one and run again
    part = LocalSession(tmp_path / "part")
    run_stage(spec, part, build_pretrain_plugins)
    shutil.rmtree(part.checkpoints[-1])
    resumed = LocalSession(tmp_path / "part")
    run_stage(spec, resumed, build_pretrain_plugins)
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6]
    wf, wr = final_weights(full, tiny_model_dir), final_weights(resumed, tiny_model_dir)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_plugins_with_zero_weights_reproduce_ncl_exactly(tmp_path, tiny_model_dir):
    ncl = LocalSession(tmp_path / "ncl")
    run_stage(make_spec(tiny_model_dir), ncl, build_pretrain_plugins)
    spec = make_spec(tiny_model_dir, ["methods.hprompt.enabled=true", "methods.hprompt.lambda_agree=0",
                                      "methods.hprompt.lambda_dis=0", "methods.hprompt.prompt_length=0"])
    spec.payload = {"hprompt": {"base_weights": spec.init_weights}}
    off = LocalSession(tmp_path / "off")
    run_stage(spec, off, build_pretrain_plugins)
    wn, wo = final_weights(ncl, tiny_model_dir), final_weights(off, tiny_model_dir)
    assert all(torch.equal(wn[k], wo[k]) for k in wn)
    assert [m["loss/mlm"] for m in ncl.metrics] == [m["loss/mlm"] for m in off.metrics]


def test_adamw_is_the_fused_kernel_with_the_default_update_rule():
    """make_adamw builds torch's fused AdamW; five steps match the per-tensor AdamW to float rounding."""
    torch.manual_seed(0)
    shapes = {"w": (64, 32), "b": (32,)}
    start = {n: torch.randn(s) for n, s in shapes.items()}
    grads = [{n: torch.randn(s) for n, s in shapes.items()} for _ in range(5)]
    fused_params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
    plain_params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
    fused = make_adamw(list(fused_params.items()), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([{"params": [plain_params["w"]], "weight_decay": 0.1},
                               {"params": [plain_params["b"]], "weight_decay": 0.0}], lr=1e-2, foreach=False)
    assert fused.defaults["fused"] is True
    for g in grads:
        for params, opt in ((fused_params, fused), (plain_params, plain)):
            for n, p in params.items():
                p.grad = g[n].clone()
            opt.step()
    for n in shapes:
        assert not torch.equal(fused_params[n], start[n])
        torch.testing.assert_close(fused_params[n], plain_params[n], rtol=1e-5, atol=1e-6)
