"""Precision selection (auto -> bf16 only on native-bf16 hardware) and bf16 correctness:
a stage under bf16 autocast tracks fp32, master weights stay fp32."""

from __future__ import annotations

import pytest
import torch

from components.methods.registry import build_pretrain_plugins
from components.models import precision as P
from components.pretrain.loop import LocalSession, run_stage
from tests.helpers.stage import final_weights, make_spec


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "fma"}, False),                       # an AVX2-only CPU (AMD EPYC here): emulated bf16
    ({"avx512f", "avx512_bf16"}, True),            # AVX-512-BF16
    ({"avx512f", "amx_tile", "amx_bf16"}, True),   # AMX
    ({"avx512f", "amx_tile"}, False),              # AMX tiles without the bf16 unit
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert P.cpu_has_native_bf16(frozenset(flags)) is native


def test_auto_follows_the_hardware_and_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda flags=None: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda flags=None: False)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    if not torch.cuda.is_available():
        assert P.resolve_precision("auto", "cuda") == "fp32"


def test_autocast_runs_matmuls_in_bf16_only_when_resolved_to_bf16(monkeypatch):
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with P.autocast_for("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with P.autocast_for("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda flags=None: False)
    with P.autocast_for("cpu", "auto"):
        assert layer(x).dtype == torch.float32


def test_bf16_stage_tracks_fp32_and_keeps_fp32_master_weights(tmp_path, tiny_model_dir):
    """Tolerance: every step's MLM loss (about 10.4 nats on the tiny model) within 0.05 of fp32's,
    and the trained weights within 2% (relative L2) of fp32's update."""
    runs = {}
    for prec in ("fp32", "bf16"):
        session = LocalSession(tmp_path / prec)
        run_stage(make_spec(tiny_model_dir, [f"pretrain.precision={prec}"]), session, build_pretrain_plugins)
        runs[prec] = session
    losses = {k: [m["loss/mlm"] for m in s.metrics] for k, s in runs.items()}
    assert [m["bf16"] for m in runs["bf16"].metrics] == [1] * 6
    assert [m["bf16"] for m in runs["fp32"].metrics] == [0] * 6
    assert losses["fp32"] != losses["bf16"]  # bf16 really ran
    assert max(abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"])) < 0.05
    w32, w16 = final_weights(runs["fp32"], tiny_model_dir), final_weights(runs["bf16"], tiny_model_dir)
    init = make_spec(tiny_model_dir).init_weights
    assert all(t.dtype == torch.float32 for t in w16.values())
    for k in ("bert.encoder.layer.0.attention.self.query.weight", "cls.predictions.transform.dense.weight"):
        update32, update16 = w32[k] - init[k], w16[k] - init[k]
        assert (update16 - update32).norm() / update32.norm() < 0.02, k
