"""Write the anytime outputs of a run: anytime.json, anytime.csv, anytime_heatmap.png, plots/, report.md.

With one seed there is no interval: report.md prints bare values (a ± 0.0000 would read as a
measured zero-width interval); anytime.json keeps its `*_ci95` keys (0.0) for tools."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.eval.matrix import SCORES, build_matrix, cell_mean_ci95, per_seed_metrics
from components.eval.metrics import METRIC_NAMES, all_metrics
from components.eval.plots import SCORE_LABELS, anytime_heatmaps_png, markdown_table, write_plots
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text, to_jsonable


def _fmt(value: float | None, half: float | None = None) -> str:
    """'0.8123', '0.8123 ± 0.0100' or 'n/a' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if half is None or math.isnan(half):
        return f"{value:.4f}"
    return f"{value:.4f} ± {half:.4f}"


def _row_labels(domains: Sequence[str]) -> list[str]:
    """Row labels: 'base', then the domain pre-trained at each stage."""
    return ["base", *domains]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(markdown_table(header, rows))


def _csv_text(domains: Sequence[str], stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """One CSV row per (row, task) with mean and ci95 for both scores; blank when missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "stage", "task", "seen", *[f"{s}{x}" for s in SCORES for x in ("", "_ci95")]])
    for i, row in enumerate(_row_labels(domains)):
        for j, task in enumerate(domains):
            values = []
            for s in SCORES:
                mean, half = stats[s]
                values += ["" if math.isnan(v) else f"{v:.6f}" for v in (mean[i, j], half[i, j])]
            writer.writerow([row, i, task, int(j + 1 <= i), *values])
    return buf.getvalue()


def _heatmap_png(
    domains: Sequence[str],
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    metrics: dict[str, dict[str, float | None]],
) -> bytes:
    """Two annotated heatmaps (accuracy, macro-F1) with the seen/unseen staircase and the metrics."""
    panels = {}
    for score in SCORES:
        m = metrics[score]
        panels[f"{SCORE_LABELS[score]}\nA_all={_fmt(m['A_all'])}  A_seen={_fmt(m['A_seen'])}\n"
               f"A_unseen={_fmt(m['A_unseen'])}  A_final={_fmt(m['A_final'])}"] = stats[score][0]
    return anytime_heatmaps_png(panels, domains, "Anytime matrix (left of the red staircase: seen domains)")


def _report_md(
    domains: Sequence[str],
    seeds: Sequence[int],
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    metrics: dict[str, dict[str, dict[str, float | None]]],
    config_summary: dict[str, Any],
    diagnostics: dict[str, dict[str, Any]],
    plots: Sequence[str] = (),
    probe: dict[str, Any] | None = None,
) -> str:
    """The markdown report: matrices, metrics, plots, config summary, diagnostics."""
    intervals = len(seeds) > 1

    def fmt(value: float | None, half: float | None) -> str:
        return _fmt(value, half if intervals else None)

    parts = [
        "# Anytime evaluation report",
        f"Seeds: {', '.join(str(s) for s in seeds)} (mean ± 95% CI half-width over seeds)." if intervals
        else f"Seed: {seeds[0]} (one seed: single values, no interval).",
        "Row i = model after pre-training stage i (row 0 = base model); column j = "
        "fine-tuned on the task of domain j. Cells with j <= i are seen domains.",
    ]
    for score in SCORES:
        mean, half = stats[score]
        rows = [
            [f"{i}: {label}", *[fmt(float(mean[i, j]), float(half[i, j])) for j in range(len(domains))]]
            for i, label in enumerate(_row_labels(domains))
        ]
        parts += [f"## Anytime matrix: {SCORE_LABELS[score]}", _md_table(["stage", *domains], rows)]
    metric_rows = [
        [name, *[fmt(metrics[s][name]["mean"], metrics[s][name]["ci95"]) for s in SCORES]]
        for name in METRIC_NAMES
    ]
    parts += ["## Metrics", _md_table(["metric", *[SCORE_LABELS[s] for s in SCORES]], metric_rows)]
    if probe:
        parts += ["## Linear-probe matrix",
                  "Frozen features of the stage's model, multinomial logistic regression fitted on the task's "
                  "train split, regularisation chosen on dev, scored on test (one value per cell: the probe "
                  "is deterministic, so no interval)."]
        for score in SCORES:
            a = np.asarray(probe[f"probe_{score}"], dtype=float)
            rows = [[f"{i}: {label}", *[_fmt(float(a[i, j])) for j in range(len(domains))]]
                    for i, label in enumerate(_row_labels(domains))]
            parts += [f"### Probe {SCORE_LABELS[score]}", _md_table(["stage", *domains], rows)]
        rows = [[name, *[_fmt(probe["metrics"][f"probe_{s}"][name]) for s in SCORES]] for name in METRIC_NAMES]
        parts += ["### Probe metrics", _md_table(["metric", *[f"probe {SCORE_LABELS[s]}" for s in SCORES]], rows)]
    parts += ["## Plots", "\n\n".join(f"![{Path(p).stem.replace('_', ' ')}]({p})"
                                        for p in ["anytime_heatmap.png", *plots])]
    config = "\n".join(f"- {k}: {v}" for k, v in config_summary.items()) or "(none given)"
    parts += ["## Configuration", config]
    if diagnostics:
        parts.append("## Diagnostics")
        for name, diag in diagnostics.items():
            rows = [
                [label, *[_fmt(None if v is None else float(v)) for v in values]]
                for label, values in zip(diag["rows"], diag["values"])
            ]
            parts += [f"### {name}", diag.get("note", ""), _md_table(["", *diag["columns"]], rows)]
    return "\n\n".join(p for p in parts if p) + "\n"


def probe_outputs(domains: Sequence[str], probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Probe matrices (NaN where missing) and their metrics, as JSON-ready values."""
    n = len(domains)
    out: dict[str, Any] = {"metrics": {}}
    for score in SCORES:
        a = build_matrix(probes, domains, n, score)
        out[f"probe_{score}"] = to_jsonable(a)
        out["metrics"][f"probe_{score}"] = to_jsonable(all_metrics(a))
    return out


def write_anytime_outputs(
    run_dir: Path,
    domains: list[str],
    cells: list[dict[str, Any]],
    seeds: list[int],
    config_summary: dict[str, Any],
    diagnostics: dict[str, dict[str, Any]] | None = None,
    probes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write anytime.json, anytime.csv, anytime_heatmap.png, plots/ and report.md into ``run_dir``.

    Each file is written atomically. Cell scores are means over ``seeds``; metrics are
    computed per seed and aggregated (mean, 95% half-width). ``probes`` (one record per
    (stage, task), components/eval/probe.py) add the additive keys ``probe_accuracy``,
    ``probe_macro_f1`` and ``metrics.probe_*``. Returns the anytime.json dict.
    """
    run_dir = Path(run_dir)
    stats = {s: cell_mean_ci95(cells, domains, seeds, s) for s in SCORES}
    metrics = {s: per_seed_metrics(cells, domains, seeds, s) for s in SCORES}
    means = {s: {k: v["mean"] for k, v in metrics[s].items()} for s in SCORES}
    result: dict[str, Any] = to_jsonable(
        {
            "domains": list(domains),
            "rows": _row_labels(domains),
            "accuracy": stats["accuracy"][0],
            "macro_f1": stats["macro_f1"][0],
            "metrics": means,
            "seeds": list(seeds),
            "accuracy_ci95": stats["accuracy"][1],
            "macro_f1_ci95": stats["macro_f1"][1],
            "metrics_ci95": {s: {k: v["ci95"] for k, v in metrics[s].items()} for s in SCORES},
        }
    )
    probe = probe_outputs(domains, probes) if probes else None
    if probe:
        result.update({k: v for k, v in probe.items() if k != "metrics"})
        result["metrics"].update(probe["metrics"])
        result["metrics_ci95"].update({k: {name: None for name in METRIC_NAMES} for k in probe["metrics"]})
    atomic_write_json(run_dir / "anytime.json", result)
    atomic_write_text(run_dir / "anytime.csv", _csv_text(domains, stats))
    atomic_write_bytes(run_dir / "anytime_heatmap.png", _heatmap_png(domains, stats, means))
    plots = [p.relative_to(run_dir).as_posix() for p in write_plots(run_dir, result, cells, seeds)]
    atomic_write_text(
        run_dir / "report.md", _report_md(domains, seeds, stats, metrics, config_summary, diagnostics or {}, plots,
                                          probe)
    )
    return result

