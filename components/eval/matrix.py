"""Assemble anytime matrices from per-cell results and aggregate them over seeds.

A cell result is a dict with at least ``stage`` (0..N), ``task`` (domain name), ``seed``,
``accuracy`` and ``macro_f1``: scores in [0, 1], or for a regression task (``label_names``
null) Pearson r in [-1, 1] in both slots, null where r is undefined. A null score is a
missing value (NaN in the matrix), like a cell not run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from components.eval.metrics import METRIC_NAMES, all_metrics, mean_ci95

SCORES: tuple[str, ...] = ("accuracy", "macro_f1")
PROBE_SCORES: tuple[str, ...] = ("probe_accuracy", "probe_macro_f1")  # additive anytime.json keys (linear probes)
ALL_SCORES: tuple[str, ...] = SCORES + PROBE_SCORES


def _cell_values(
    cells: Sequence[dict[str, Any]], domains: Sequence[str], n_stages: int, score: str
) -> dict[tuple[int, int, int], float]:
    """Map (stage, column, seed) -> score, checking every cell; duplicates are an error; a null
    score is left out (missing)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    column = {name: j for j, name in enumerate(domains)}
    out: dict[tuple[int, int, int], float] = {}
    seen: set[tuple[int, int, int]] = set()
    for cell in cells:
        stage, task, seed = int(cell["stage"]), cell["task"], int(cell["seed"])
        if not 0 <= stage <= n_stages:
            raise ValueError(f"cell stage {stage} outside 0..{n_stages}: {cell}")
        if task not in column:
            raise ValueError(f"cell task {task!r} is not one of the domains {list(domains)}")
        regression = "label_names" in cell and cell["label_names"] is None
        low = -1.0 if regression else 0.0
        value = math.nan if cell[score] is None else float(cell[score])
        if not (math.isnan(value) or (math.isfinite(value) and low <= value <= 1.0)):
            raise ValueError(f"cell {score} must be in [{low:g}, 1], got {value}: {cell}")
        key = (stage, column[task], seed)
        if key in seen:
            raise ValueError(f"duplicate cell for stage {stage}, task {task!r}, seed {seed}")
        seen.add(key)
        if not math.isnan(value):
            out[key] = value
    return out


def build_matrix(
    cells: Sequence[dict[str, Any]],
    domains: Sequence[str],
    n_stages: int,
    score: str,
    seed: int | None = None,
) -> np.ndarray:
    """Matrix a[i][j] (shape (n_stages+1, len(domains))) of ``score``; NaN where missing.

    With ``seed`` None a cell is the mean over the seeds present for it; otherwise only
    cells of that seed are used.
    """
    values = _cell_values(cells, domains, n_stages, score)
    groups: dict[tuple[int, int], list[float]] = {}
    for (stage, col, s), value in values.items():
        if seed is None or s == seed:
            groups.setdefault((stage, col), []).append(value)
    a = np.full((n_stages + 1, len(domains)), np.nan)
    for (stage, col), vals in groups.items():
        a[stage, col] = float(np.mean(vals))
    return a


def cell_mean_ci95(
    cells: Sequence[dict[str, Any]], domains: Sequence[str], seeds: Sequence[int], score: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell mean and 95% half-width over ``seeds`` (see ``mean_ci95``); NaN where missing.

    Matrices have shape (N+1, N) with N = len(domains); cells of other seeds are ignored.
    """
    n = len(domains)
    wanted = set(seeds)
    groups: dict[tuple[int, int], list[float]] = {}
    for (stage, col, s), value in _cell_values(cells, domains, n, score).items():
        if s in wanted:
            groups.setdefault((stage, col), []).append(value)
    mean = np.full((n + 1, n), np.nan)
    half = np.full((n + 1, n), np.nan)
    for (stage, col), vals in groups.items():
        mean[stage, col], half[stage, col] = mean_ci95(vals)
    return mean, half


def per_seed_metrics(
    cells: Sequence[dict[str, Any]], domains: Sequence[str], seeds: Sequence[int], score: str
) -> dict[str, dict[str, float | None]]:
    """For each metric, ``{"mean", "ci95"}`` over the per-seed values (``mean_ci95``).

    The metric is computed on each seed's own matrix, then aggregated; it is None when it
    is None (empty index set or missing cell) for any seed.
    """
    if not seeds:
        raise ValueError("per_seed_metrics needs at least one seed")
    n = len(domains)
    per_seed = [all_metrics(build_matrix(cells, domains, n, score, seed=s)) for s in seeds]
    out: dict[str, dict[str, float | None]] = {}
    for name in METRIC_NAMES:
        vals = [m[name] for m in per_seed]
        if any(v is None for v in vals):
            out[name] = {"mean": None, "ci95": None}
        else:
            mean, half = mean_ci95([float(v) for v in vals if v is not None])
            out[name] = {"mean": mean, "ci95": half}
    return out
