"""benchmarks/precision_matrix.py: the paired bf16 - fp32 comparison and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.precision_matrix import compare, main


def _anytime(a: np.ndarray) -> dict:
    return {"accuracy": a.tolist()}


def test_a_constant_bf16_shift_is_measured_and_judged_against_the_seed_noise():
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2]
    fp32 = {s: 0.6 + 0.05 * rng.standard_normal((4, 3)) for s in seeds}  # seed noise ~0.03 on A_all
    same = compare({"fp32": {s: _anytime(fp32[s]) for s in seeds}, "bf16": {s: _anytime(fp32[s] + 1e-4) for s in seeds}},
                   {"fp32": {s: 100.0 for s in seeds}, "bf16": {s: 60.0 for s in seeds}}, seeds)
    a_all = same["scores"]["accuracy"]["metrics"]["A_all"]
    assert a_all["bf16_minus_fp32"]["mean"] == pytest.approx(1e-4)
    assert a_all["within_noise"] is True  # a tiny systematic shift: the whole interval lies inside +/- sd
    assert same["scores"]["accuracy"]["max_abs_cell_difference"] == pytest.approx(1e-4)
    assert same["ratio_wall_bf16_over_fp32"] == pytest.approx(0.6)

    noisy = {s: fp32[s] + 0.002 * rng.standard_normal((4, 3)) for s in seeds}
    close = compare({"fp32": {s: _anytime(fp32[s]) for s in seeds}, "bf16": {s: _anytime(noisy[s]) for s in seeds}},
                    {"fp32": {}, "bf16": {}}, seeds)
    m = close["scores"]["accuracy"]["metrics"]["A_all"]
    assert abs(m["bf16_minus_fp32"]["mean"]) + m["bf16_minus_fp32"]["ci95"] < m["fp32_seed_sd"]
    assert m["within_noise"] is True
    assert close["ratio_wall_bf16_over_fp32"] is None

    far = compare({"fp32": {s: _anytime(fp32[s]) for s in seeds},
                   "bf16": {s: _anytime(fp32[s] - 0.2 + 0.002 * rng.standard_normal((4, 3))) for s in seeds}},
                  {"fp32": {}, "bf16": {}}, seeds)
    assert far["scores"]["accuracy"]["metrics"]["A_all"]["within_noise"] is False


def test_one_seed_is_refused_before_any_run(tmp_path):
    from components.errors import InputError

    with pytest.raises(InputError, match="at least 2 seeds"):
        main(["--config", "pipelines/configs/default.yaml", "--seeds", "0", "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
