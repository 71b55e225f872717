"""Anytime metrics over the (N+1) x N matrix ``a`` (docs/design.md, section 4).

``a[i][j]`` is the test score of the model after pre-training stage ``i`` (row 0 = base
model) fine-tuned on the task of domain ``j``. Formulas use the design's indices: rows
``i = 0..N``, tasks ``j = 1..N``; task ``j`` is numpy column ``j - 1``.

A metric whose index set is empty (e.g. BWT with N = 1), or which needs a missing (NaN)
cell, is ``None``, never NaN.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable, Sequence

import numpy as np

from components.config import MetricName

METRIC_NAMES: tuple[str, ...] = typing.get_args(MetricName)  # names declared by the config schema

# Two-sided 95% Student-t critical values t_{0.975, df} for df = 1..30.
_T975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def _check(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Return ``a`` as a float array and N, after checking the shape is (N+1, N), N >= 1."""
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[1] < 1 or a.shape[0] != a.shape[1] + 1:
        raise ValueError(f"anytime matrix must have shape (N+1, N) with N >= 1, got {a.shape}")
    return a, a.shape[1]


def _mean(values: Iterable[float]) -> float | None:
    """Mean of ``values``; None if there are none or any is NaN."""
    vals = np.asarray(list(values), dtype=float)
    if vals.size == 0 or np.isnan(vals).any():
        return None
    return float(vals.mean())


def a_all(a: np.ndarray) -> float | None:
    """A_all = mean over i >= 1 and all j of a[i][j]."""
    a, _ = _check(a)
    return _mean(a[1:].ravel())


def a_seen(a: np.ndarray) -> float | None:
    """A_seen = mean over i >= 1, j <= i of a[i][j]."""
    a, n = _check(a)
    return _mean(a[i, j - 1] for i in range(1, n + 1) for j in range(1, i + 1))


def a_unseen(a: np.ndarray) -> float | None:
    """A_unseen = mean over i >= 1, j > i of a[i][j]."""
    a, n = _check(a)
    return _mean(a[i, j - 1] for i in range(1, n + 1) for j in range(i + 1, n + 1))


def a_final(a: np.ndarray) -> float | None:
    """A_final = mean over j of a[N][j]."""
    a, n = _check(a)
    return _mean(a[n])


def learning_accuracy(a: np.ndarray) -> float | None:
    """Learning accuracy = mean over j of a[j][j]."""
    a, n = _check(a)
    return _mean(a[j, j - 1] for j in range(1, n + 1))


def bwt(a: np.ndarray) -> float | None:
    """BWT = mean over j < N of (a[N][j] - a[j][j])  (GEM, Lopez-Paz & Ranzato 2017)."""
    a, n = _check(a)
    return _mean(a[n, j - 1] - a[j, j - 1] for j in range(1, n))


def fwt(a: np.ndarray) -> float | None:
    """FWT = mean over j > 1 of (a[j-1][j] - a[0][j])  (GEM, base row as reference)."""
    a, n = _check(a)
    return _mean(a[j - 1, j - 1] - a[0, j - 1] for j in range(2, n + 1))


def forgetting(a: np.ndarray) -> float | None:
    """Forgetting = mean over j < N of (max over l in [j, N-1] of a[l][j] - a[N][j])  (Chaudhry et al. 2018)."""
    a, n = _check(a)
    return _mean(a[j:n, j - 1].max() - a[n, j - 1] for j in range(1, n))


_FUNCTIONS = {
    "A_all": a_all,
    "A_seen": a_seen,
    "A_unseen": a_unseen,
    "A_final": a_final,
    "learning_accuracy": learning_accuracy,
    "BWT": bwt,
    "FWT": fwt,
    "forgetting": forgetting,
}


def all_metrics(a: np.ndarray) -> dict[str, float | None]:
    """Every metric of ``a``, keyed by ``METRIC_NAMES`` in that order."""
    return {name: _FUNCTIONS[name](a) for name in METRIC_NAMES}


def partial_metrics(a: np.ndarray, stages_done: int) -> dict[str, float | None]:
    """A_all, A_seen, A_unseen over the filled rows 1..t only (t = ``stages_done``).

    A_all = mean over 1 <= i <= t, all j; A_seen = mean over 1 <= i <= t, j <= i;
    A_unseen = mean over 1 <= i <= t, j > i. Rows after t may be NaN (not run yet).
    """
    a, n = _check(a)
    if not 0 <= stages_done <= n:
        raise ValueError(f"stages_done must be in [0, {n}], got {stages_done}")
    rows = range(1, stages_done + 1)
    return {
        "A_all": _mean(a[i, j - 1] for i in rows for j in range(1, n + 1)),
        "A_seen": _mean(a[i, j - 1] for i in rows for j in range(1, i + 1)),
        "A_unseen": _mean(a[i, j - 1] for i in rows for j in range(i + 1, n + 1)),
    }


def t_critical_95(df: int) -> float:
    """Two-sided 95% Student-t critical value t_{0.975, df}; 1.96 for df > 30."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width: mean = sum(x) / n, half = t_{0.975, n-1} * s / sqrt(n).

    ``s`` is the sample standard deviation (ddof = 1). One value gives half-width 0.0.
    """
    vals = np.asarray(values, dtype=float)
    if vals.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if np.isnan(vals).any():
        raise ValueError("mean_ci95 got a NaN value")
    mean = float(vals.mean())
    if vals.size == 1:
        return mean, 0.0
    half = t_critical_95(vals.size - 1) * float(vals.std(ddof=1)) / math.sqrt(vals.size)
    return mean, half
