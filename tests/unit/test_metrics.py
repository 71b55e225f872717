"""Anytime metrics on hand-computed matrices (docs/design.md, section 4)."""

import math

import numpy as np
import pytest

from components.eval.metrics import (
    METRIC_NAMES,
    a_all,
    a_final,
    a_seen,
    a_unseen,
    all_metrics,
    bwt,
    forgetting,
    fwt,
    learning_accuracy,
    mean_ci95,
    partial_metrics,
    t_critical_95,
)

# Rows i = 0 (base) .. 3, columns j = 1..3. a[0][1] and a[1][2] are deliberately high so that
# a wrong range (row 0 or rows l < j in the forgetting max) changes the result.
A = np.array(
    [
        [0.95, 0.40, 0.30],  # i = 0 (base)
        [0.80, 0.95, 0.35],  # i = 1
        [0.82, 0.85, 0.40],  # i = 2
        [0.60, 0.75, 0.90],  # i = 3 = N
    ]
)


def test_a_all():
    # rows 1..3: (0.80+0.95+0.35) + (0.82+0.85+0.40) + (0.60+0.75+0.90) = 2.10+2.07+2.25 = 6.42; / 9
    assert a_all(A) == pytest.approx(6.42 / 9)


def test_a_seen():
    # j <= i: 0.80 | 0.82+0.85 | 0.60+0.75+0.90 = 4.72; / 6
    assert a_seen(A) == pytest.approx(4.72 / 6)


def test_a_unseen():
    # j > i, i >= 1: a[1][2]=0.95, a[1][3]=0.35, a[2][3]=0.40 -> 1.70 / 3 (row 0 not included)
    assert a_unseen(A) == pytest.approx(1.70 / 3)


def test_a_final():
    # row 3: (0.60+0.75+0.90) / 3 = 0.75
    assert a_final(A) == pytest.approx(0.75)


def test_learning_accuracy():
    # diagonal a[j][j]: (0.80+0.85+0.90) / 3 = 0.85
    assert learning_accuracy(A) == pytest.approx(0.85)


def test_bwt():
    # j=1: 0.60-0.80 = -0.20; j=2: 0.75-0.85 = -0.10; mean = -0.15
    assert bwt(A) == pytest.approx(-0.15)


def test_fwt():
    # j=2: a[1][2]-a[0][2] = 0.95-0.40 = 0.55; j=3: a[2][3]-a[0][3] = 0.40-0.30 = 0.10; mean = 0.325
    assert fwt(A) == pytest.approx(0.325)


def test_forgetting():
    # j=1: max(a[1][1], a[2][1]) = max(0.80, 0.82) = 0.82, minus a[3][1]=0.60 -> 0.22
    # j=2: max(a[2][2]) = 0.85 (a[1][2]=0.95 is before the task was seen), minus 0.75 -> 0.10
    # mean = 0.16 (row 0 with 0.95 would give 0.35 for j=1)
    assert forgetting(A) == pytest.approx(0.16)


def test_all_metrics_keys_and_values():
    m = all_metrics(A)
    assert list(m) == ["A_all", "A_seen", "A_unseen", "A_final", "learning_accuracy", "BWT", "FWT", "forgetting"]
    assert list(m) == list(METRIC_NAMES)
    assert m["BWT"] == pytest.approx(-0.15) and m["forgetting"] == pytest.approx(0.16)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_single_domain_empty_index_sets_are_none():
    m = all_metrics(np.array([[0.5], [0.7]]))
    assert m == {
        "A_all": pytest.approx(0.7),
        "A_seen": pytest.approx(0.7),
        "A_unseen": None,
        "A_final": pytest.approx(0.7),
        "learning_accuracy": pytest.approx(0.7),
        "BWT": None,
        "FWT": None,
        "forgetting": None,
    }


def test_missing_cell_gives_none_not_nan():
    a = A.copy()
    a[3, 0] = np.nan
    m = all_metrics(a)
    assert m["A_final"] is None and m["BWT"] is None and m["forgetting"] is None and m["A_all"] is None
    assert m["FWT"] == pytest.approx(0.325)  # does not read row 3
    assert m["A_unseen"] == pytest.approx(1.70 / 3)
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        all_metrics(np.zeros((3, 3)))


def test_partial_metrics():
    a = A.copy()
    a[3] = np.nan  # stage 3 not done yet
    # t=2: A_all = (2.10+2.07)/6; A_seen = (0.80+0.82+0.85)/3; A_unseen = (0.95+0.35+0.40)/3
    assert partial_metrics(a, 2) == {
        "A_all": pytest.approx(4.17 / 6),
        "A_seen": pytest.approx(2.47 / 3),
        "A_unseen": pytest.approx(1.70 / 3),
    }
    # t=1: A_all = 2.10/3; A_seen = 0.80; A_unseen = (0.95+0.35)/2
    assert partial_metrics(a, 1) == {
        "A_all": pytest.approx(0.70),
        "A_seen": pytest.approx(0.80),
        "A_unseen": pytest.approx(0.65),
    }
    assert partial_metrics(a, 0) == {"A_all": None, "A_seen": None, "A_unseen": None}
    assert partial_metrics(A, 3)["A_all"] == pytest.approx(a_all(A))
    with pytest.raises(ValueError):
        partial_metrics(a, 4)


def test_t_critical_values():
    assert t_critical_95(1) == pytest.approx(12.706, abs=1e-3)
    assert t_critical_95(4) == pytest.approx(2.776, abs=1e-3)
    assert t_critical_95(30) == pytest.approx(2.042, abs=1e-3)
    assert t_critical_95(31) == 1.96


def test_mean_ci95():
    # [1, 2, 3]: mean 2, s = 1, df = 2 -> t = 4.303; half = 4.303 * 1 / sqrt(3) = 2.484
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    # two values 0.5, 0.6: s = 0.0707107, df = 1 -> half = 12.706 * 0.0707107 / sqrt(2) = 0.6353
    assert mean_ci95([0.5, 0.6])[1] == pytest.approx(0.6353, abs=1e-4)
    assert mean_ci95([0.7]) == (0.7, 0.0)
    values = [float(i % 2) for i in range(41)]  # df = 40 -> 1.96
    assert mean_ci95(values)[1] == pytest.approx(1.96 * np.std(values, ddof=1) / math.sqrt(41))
    with pytest.raises(ValueError):
        mean_ci95([])
