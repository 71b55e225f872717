"""Anytime outputs (json, csv, png, md), matrix assembly over seeds, and atomic writes."""

import csv
import json
import math

import numpy as np
import pytest

from components import io as cio
from components.eval.matrix import build_matrix, cell_mean_ci95, per_seed_metrics
from components.eval.report import write_anytime_outputs

DOMAINS = ["news", "bio"]
# Per-seed accuracy matrices (rows: base, after news, after bio); macro-F1 = 0.9 * accuracy.
ACC = {
    0: [[0.5, 0.4], [0.8, 0.5], [0.7, 0.9]],
    1: [[0.6, 0.4], [0.9, 0.6], [0.7, 0.8]],
}
T1 = 12.7062  # t_{0.975, df=1}
REQUIRED = {"domains", "rows", "accuracy", "macro_f1", "metrics"}
OPTIONAL = {"seeds", "accuracy_ci95", "macro_f1_ci95", "metrics_ci95"}
METRICS = ["A_all", "A_seen", "A_unseen", "A_final", "learning_accuracy", "BWT", "FWT", "forgetting"]


def make_cells(skip=()):
    return [
        {"stage": i, "task": task, "seed": seed, "accuracy": m[i][j], "macro_f1": 0.9 * m[i][j]}
        for seed, m in ACC.items()
        for i in range(3)
        for j, task in enumerate(DOMAINS)
        if (i, task) not in skip
    ]


def _strict_json(path):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_build_matrix_mean_and_single_seed():
    cells = make_cells(skip={(2, "bio")})
    mean = build_matrix(cells, DOMAINS, 2, "accuracy")
    assert mean[1, 0] == pytest.approx(0.85) and mean[0, 0] == pytest.approx(0.55)
    assert math.isnan(mean[2, 1])
    np.testing.assert_allclose(build_matrix(cells, DOMAINS, 2, "accuracy", seed=1)[:2], ACC[1][:2])


def test_build_matrix_rejects_bad_cells():
    with pytest.raises(ValueError, match="not one of the domains"):
        build_matrix([{"stage": 0, "task": "law", "seed": 0, "accuracy": 0.5, "macro_f1": 0.5}], DOMAINS, 2, "accuracy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_matrix([{"stage": 0, "task": "bio", "seed": 0, "accuracy": 55.0, "macro_f1": 0.5}], DOMAINS, 2, "accuracy")
    with pytest.raises(ValueError, match="duplicate"):
        build_matrix(make_cells() + make_cells()[:1], DOMAINS, 2, "accuracy")


def test_cell_mean_ci95_and_per_seed_metrics():
    mean, half = cell_mean_ci95(make_cells(), DOMAINS, [0, 1], "accuracy")
    # cell (1, news): 0.8, 0.9 -> s = 0.0707107, half = 12.7062 * s / sqrt(2) = 12.7062 * 0.05
    assert mean[1, 0] == pytest.approx(0.85) and half[1, 0] == pytest.approx(T1 * 0.05)
    assert half[0, 1] == 0.0  # 0.4 in both seeds
    # seed 0 only: half-width 0 everywhere
    assert not cell_mean_ci95(make_cells(), DOMAINS, [0], "accuracy")[1].any()
    m = per_seed_metrics(make_cells(), DOMAINS, [0, 1], "accuracy")
    # A_final: seed 0 (0.7+0.9)/2 = 0.8, seed 1 (0.7+0.8)/2 = 0.75 -> 0.775 ± 12.7062 * 0.025
    assert m["A_final"]["mean"] == pytest.approx(0.775)
    assert m["A_final"]["ci95"] == pytest.approx(T1 * 0.025)
    # BWT: seed 0 0.7-0.8 = -0.1, seed 1 0.7-0.9 = -0.2 -> -0.15; forgetting = max(a[1][1]) - a[2][1] -> 0.15
    assert m["BWT"]["mean"] == pytest.approx(-0.15) and m["forgetting"]["mean"] == pytest.approx(0.15)
    # FWT: a[1][2]-a[0][2]: seed 0 0.5-0.4 = 0.1, seed 1 0.6-0.4 = 0.2 -> 0.15
    assert m["FWT"]["mean"] == pytest.approx(0.15)


def test_write_anytime_outputs(tmp_path):
    diagnostics = {
        "held-out MLM loss": {
            "rows": ["base", "news", "bio"],
            "columns": DOMAINS,
            "values": [[2.5, 2.6], [2.1, 2.7], [2.3, 2.0]],
            "note": "per-stage held-out MLM loss on every domain",
        }
    }
    out = write_anytime_outputs(
        tmp_path, DOMAINS, make_cells(), [0, 1], {"model": "tiny-bert", "method": "ncl"}, diagnostics
    )

    data = _strict_json(tmp_path / "anytime.json")
    assert data == out
    assert REQUIRED <= set(data) <= REQUIRED | OPTIONAL
    assert data["domains"] == DOMAINS and data["rows"] == ["base", "news", "bio"]
    assert data["seeds"] == [0, 1]
    np.testing.assert_allclose(data["accuracy"], [[0.55, 0.4], [0.85, 0.55], [0.7, 0.85]])
    np.testing.assert_allclose(data["macro_f1"], 0.9 * np.array(data["accuracy"]))
    assert data["accuracy_ci95"][1][0] == pytest.approx(T1 * 0.05)
    for score in ("accuracy", "macro_f1"):
        assert list(data["metrics"][score]) == METRICS
        assert list(data["metrics_ci95"][score]) == METRICS
    assert data["metrics"]["accuracy"]["A_final"] == pytest.approx(0.775)
    assert data["metrics"]["macro_f1"]["A_final"] == pytest.approx(0.9 * 0.775)
    assert data["metrics_ci95"]["accuracy"]["A_final"] == pytest.approx(T1 * 0.025)

    with open(tmp_path / "anytime.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2
    row = next(r for r in rows if r["row"] == "news" and r["task"] == "news")
    assert row["stage"] == "1" and row["seen"] == "1"
    assert float(row["accuracy"]) == pytest.approx(0.85)
    assert float(row["accuracy_ci95"]) == pytest.approx(T1 * 0.05, abs=1e-5)
    assert float(row["macro_f1"]) == pytest.approx(0.765)
    assert next(r for r in rows if r["row"] == "base" and r["task"] == "news")["seen"] == "0"

    png = (tmp_path / "anytime_heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    md = (tmp_path / "report.md").read_text()
    assert "| stage | news | bio |" in md
    assert "| 1: news | 0.8500 ± 0.6353 | 0.5500 ± 0.6353 |" in md
    assert "| 0: base | 0.5500 ± 0.6353 | 0.4000 ± 0.0000 |" in md
    assert "| A_final | 0.7750 ± 0.3177 | 0.6975 ± 0.2859 |" in md
    assert "- model: tiny-bert" in md
    assert "### held-out MLM loss" in md and "| bio | 2.3000 | 2.0000 |" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_cells_are_null(tmp_path):
    out = write_anytime_outputs(tmp_path, DOMAINS, make_cells(skip={(2, "bio")}), [0, 1], {})
    data = _strict_json(tmp_path / "anytime.json")
    assert data == out
    assert data["accuracy"][2][1] is None and data["accuracy_ci95"][2][1] is None
    assert data["metrics"]["accuracy"]["A_final"] is None
    assert data["metrics"]["accuracy"]["BWT"] == pytest.approx(-0.15)  # does not need the cell
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "anytime.json"
    cio.atomic_write_json(target, {"version": 1})

    def crash(fd):
        raise OSError("disk died after the bytes were written")

    monkeypatch.setattr(cio.os, "fsync", crash)
    with pytest.raises(OSError, match="disk died"):
        cio.atomic_write_json(target, {"version": 2, "payload": "x" * 100_000})
    monkeypatch.undo()
    assert cio.read_json(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["anytime.json"]  # temp file cleaned up


def test_atomic_write_json_nan_and_inf(tmp_path):
    target = tmp_path / "x.json"
    cio.atomic_write_json(target, {"a": float("nan"), "m": np.array([[1.0, np.nan]]), "n": np.int64(3)})
    assert cio.read_json(target) == {"a": None, "m": [[1.0, None]], "n": 3}
    with pytest.raises(ValueError):
        cio.atomic_write_json(target, {"a": float("inf")})
    assert cio.read_json(target)["n"] == 3
