"""The pictures of a run, drawn from the files already in its directory (Agg canvas, no pyplot state).

    plots/pretrain_loss.png     pre-training loss against the step, one line per stage
                                (metrics/pretrain_stageNN.jsonl)
    plots/heldout_mlm_loss.png  held-out MLM loss, stage x domain heatmap (metrics/stages.jsonl)
    plots/task_scores.png       each task's accuracy and macro-F1 against the stage: mean over
                                seeds, shaded 95% band mean +/- t_{0.975,n-1} s / sqrt(n) (>= 2 seeds)
    plots/probe.png             the probe matrix (anytime.json `probe_accuracy`, `probe_macro_f1`),
                                only when anytime.json has it

A picture whose data is not there (no pre-training records, say) is skipped; `write_plots`
returns the ones it wrote. `comparison_figure` draws several runs side by side (compare.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from components.eval.matrix import SCORES
from components.eval.metrics import METRIC_NAMES, mean_ci95
from components.io import atomic_write_bytes, read_jsonl

SCORE_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
PROBE_KEYS = ("probe_accuracy", "probe_macro_f1")


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _heatmap(ax, values: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str,
             vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis", fig: Figure | None = None,
             staircase: bool = False):
    """An annotated heatmap of `values` (NaN shown as n/a). `staircase`: an (N+1) x N anytime
    matrix, with the red boundary between seen (left, j < i) and unseen tasks."""
    image = ax.imshow(np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    finite = values[np.isfinite(values)]
    mid = float((finite.min() + finite.max()) / 2) if finite.size else 0.0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "n/a" if math.isnan(v) else f"{v:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if math.isnan(v) or v >= mid else "white")
    if staircase:  # row i has seen tasks j < i: the boundary runs down the diagonal
        n = values.shape[1]
        ax.plot([x for i in range(n + 1) for x in (i - 0.5, i - 0.5)],
                [y for i in range(n + 1) for y in (i - 0.5, i + 0.5)], color="red", linewidth=2)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n + 0.5, -0.5)
    ax.set_xticks(range(len(columns)), list(columns), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def anytime_heatmaps_png(matrices: dict[str, np.ndarray], domains: Sequence[str], title: str = "") -> bytes:
    """(N+1) x N anytime matrices side by side, annotated, with the seen/unseen staircase; the
    colour scale is [min(0, smallest value), 1] (a regression task's Pearson r may be < 0)."""
    n, k = len(domains), len(matrices)
    fig = Figure(figsize=(k * (2.4 + 0.9 * n), 2.2 + 0.7 * (n + 1)))
    rows = [f"{i}: {r}" for i, r in enumerate(["base", *domains])]
    for ax, (name, values) in zip(fig.subplots(1, k, squeeze=False)[0], matrices.items()):
        values = np.asarray(values, dtype=float)
        low = min(0.0, float(np.nanmin(values, initial=0.0)))
        _heatmap(ax, values, rows, domains, name, vmin=low, vmax=1.0, fig=fig, staircase=True)
        ax.set_xlabel("fine-tuned on task")
        ax.set_ylabel("after pre-training stage")
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _matrix(values: Any) -> np.ndarray:
    """A JSON matrix (nulls allowed) as a float array with NaN for null."""
    return np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)


def pretrain_loss_png(metrics_dir: Path, domains: Sequence[str]) -> bytes | None:
    """Training loss against the step, one line per stage; None without any per-step record."""
    curves = []
    for index, name in enumerate(domains, 1):
        records = read_jsonl(metrics_dir / f"pretrain_stage{index:02d}.jsonl")
        if records:
            by_step = {r["step"]: r["loss"] for r in records}   # a resumed stage may repeat steps
            steps = sorted(by_step)
            curves.append((f"stage {index}: {name}", steps, [by_step[s] for s in steps]))
    if not curves:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for label, steps, losses in curves:
        ax.plot(steps, losses, marker="." if len(steps) < 30 else None, label=label)
    ax.set_xlabel("step (within the stage)")
    ax.set_ylabel("training loss (MLM + plug-in terms)")
    ax.set_title("Pre-training loss per stage", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def heldout_loss_png(stages_jsonl: Path, domains: Sequence[str]) -> bytes | None:
    """Held-out MLM loss heatmap (rows: model after each stage; columns: domain)."""
    records = sorted(read_jsonl(stages_jsonl), key=lambda r: r["stage"])
    if not records:
        return None
    values = np.array([[r["domains"].get(d, {}).get("mlm_loss", np.nan) for d in domains] for r in records], dtype=float)
    fig = Figure(figsize=(2.4 + 1.0 * len(domains), 1.6 + 0.55 * len(records)))
    ax = fig.subplots()
    _heatmap(ax, values, [f"{r['stage']}: {r['row']}" for r in records], domains,
             "Held-out MLM loss (lower is better)", cmap="viridis_r", fig=fig)
    ax.set_xlabel("held-out blocks of domain")
    ax.set_ylabel("after pre-training stage")
    return _png(fig)


def score_bands(cells: Sequence[dict], domains: Sequence[str], seeds: Sequence[int], score: str
                ) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per task: the stages it has cells for, the mean over seeds and the 95% half-width
    (NaN with one seed: no interval)."""
    wanted = set(seeds)
    values: dict[tuple[str, int], list[float]] = {}
    for c in cells:
        if int(c["seed"]) in wanted:
            values.setdefault((c["task"], int(c["stage"])), []).append(float(c[score]))
    out = {}
    for task in domains:
        stages = sorted(s for (t, s) in values if t == task)
        stats = [mean_ci95(values[(task, s)]) for s in stages]
        out[task] = (stages, [m for m, _ in stats],
                     [h if len(values[(task, s)]) > 1 else math.nan for s, (_, h) in zip(stages, stats)])
    return out


def task_scores_png(cells: Sequence[dict], domains: Sequence[str], seeds: Sequence[int]) -> bytes | None:
    """Each task's score against the stage (one panel per score), with the 95% band over seeds."""
    if not cells:
        return None
    rows = ["base", *domains]
    fig = Figure(figsize=(11.0, 4.0))
    for ax, score in zip(fig.subplots(1, len(SCORES), squeeze=False)[0], SCORES):
        for task, (stages, mean, half) in score_bands(cells, domains, seeds, score).items():
            if not stages:
                continue
            (line,) = ax.plot(stages, mean, marker="o", label=task)
            m, h = np.array(mean), np.array(half)
            if np.isfinite(h).any():
                lo, hi = np.clip(m - np.nan_to_num(h), 0, 1), np.clip(m + np.nan_to_num(h), 0, 1)  # scores live in [0, 1]
                ax.fill_between(stages, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xticks(range(len(rows)), [f"{i}: {r}" for i, r in enumerate(rows)], rotation=30, ha="right")
        ax.set_xlabel("after pre-training stage")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"test {SCORE_LABELS[score]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="task", title_fontsize=8)
        band = "mean, 95% band over seeds" if len(seeds) > 1 else "one seed: no band"
        ax.set_title(f"Task {SCORE_LABELS[score]} by stage ({band})", fontsize=10)
    return _png(fig)


def probe_png(anytime: dict) -> bytes | None:
    """The probe matrices of anytime.json, side by side; None when it has none."""
    keys = [k for k in PROBE_KEYS if anytime.get(k) is not None]
    if not keys:
        return None
    domains = anytime["domains"]
    fig = Figure(figsize=(len(keys) * (2.6 + 1.0 * len(domains)), 1.8 + 0.55 * (len(domains) + 1)))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        values = _matrix(anytime[key])
        rows = anytime["rows"] if len(anytime["rows"]) == values.shape[0] else [str(i) for i in range(values.shape[0])]
        _heatmap(ax, values, [f"{i}: {r}" for i, r in enumerate(rows)], domains, key.replace("_", " "),
                 vmin=0.0, vmax=1.0, fig=fig, staircase=values.shape[0] == len(domains) + 1)
        ax.set_xlabel("probed task")
        ax.set_ylabel("after pre-training stage")
    return _png(fig)


def write_plots(run_dir: Path, anytime: dict, cells: Sequence[dict], seeds: Sequence[int]) -> list[Path]:
    """Write every picture whose data exists into `run_dir/plots/`; return their paths."""
    run_dir = Path(run_dir)
    domains = anytime["domains"]
    images = {
        "pretrain_loss.png": pretrain_loss_png(run_dir / "metrics", domains),
        "heldout_mlm_loss.png": heldout_loss_png(run_dir / "metrics" / "stages.jsonl", domains),
        "task_scores.png": task_scores_png(cells, domains, seeds),
        "probe.png": probe_png(anytime),
    }
    written = []
    for name, data in images.items():
        if data is not None:
            atomic_write_bytes(run_dir / "plots" / name, data)
            written.append(run_dir / "plots" / name)
    return written


def comparison_figure(runs: Sequence[tuple[str, dict]], score: str) -> bytes:
    """Several runs side by side: each run's anytime matrix of `score`, then their metrics as bars.

    `runs`: (label, anytime.json dict) pairs."""
    n = len(runs)
    width = max(len(a["domains"]) for _, a in runs)
    fig = Figure(figsize=(n * (1.8 + 0.9 * width) + 6.0, 1.8 + 0.55 * (width + 1)))
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    for ax, (label, anytime) in zip(axes, runs):
        rows = [f"{i}: {r}" for i, r in enumerate(anytime["rows"])]
        _heatmap(ax, _matrix(anytime[score]), rows, anytime["domains"], f"{label}: {SCORE_LABELS[score]}",
                 vmin=0.0, vmax=1.0, staircase=True)
    ax = axes[-1]
    x = np.arange(len(METRIC_NAMES))
    bar = 0.8 / n
    for k, (label, anytime) in enumerate(runs):
        metrics = anytime["metrics"][score]
        ax.bar(x + (k - (n - 1) / 2) * bar, [np.nan if metrics.get(m) is None else metrics[m] for m in METRIC_NAMES],
               bar, label=label)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(x, list(METRIC_NAMES), rotation=40, ha="right")
    ax.set_title(f"metrics ({SCORE_LABELS[score]})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
