"""Compare the anytime metrics of several runs, read from each run's anytime.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.errors import InputError
from components.eval.matrix import ALL_SCORES
from components.eval.metrics import METRIC_NAMES
from components.io import atomic_write_bytes, read_json


def load_anytime(run_dir: Path | str) -> dict[str, Any]:
    """``run_dir/anytime.json``; InputError naming the file if it is missing or not JSON."""
    path = Path(run_dir) / "anytime.json"
    try:
        return read_json(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (is this a finished run directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None


def load_metrics(run_dir: Path | str, score: str) -> dict[str, float | None]:
    """The ``score`` metrics of ``run_dir/anytime.json``; InputError naming the file if unusable."""
    path = Path(run_dir) / "anytime.json"
    data = load_anytime(run_dir)
    metrics = data.get("metrics", {}).get(score) if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise InputError(f"{path}: malformed anytime.json, no 'metrics.{score}' object")
    for name in METRIC_NAMES:
        if name not in metrics:
            raise InputError(f"{path}: malformed anytime.json, no metrics.{score}.{name}")
        value = metrics[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{path}: malformed anytime.json, metrics.{score}.{name} = {value!r}")
    return {name: None if metrics[name] is None else float(metrics[name]) for name in METRIC_NAMES}


def compare_runs(
    run_dirs: Sequence[Path | str], labels: Sequence[str] | None = None, score: str = "accuracy"
) -> dict[str, Any]:
    """Metrics of each run and their difference vs the first run (run - first; None if either is None).

    Returns ``{"score", "metrics": [names], "runs": [{"label", "dir", "metrics"}],
    "diff_vs_first": [{"label", "metrics"}]}``; labels default to the directory names.
    """
    if score not in ALL_SCORES:
        raise InputError(f"--score must be one of {', '.join(ALL_SCORES)}, got {score!r}")
    if not run_dirs:
        raise InputError("give at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    labels = list(labels) if labels is not None else [d.resolve().name for d in dirs]
    if len(labels) != len(dirs):
        raise InputError(f"--labels has {len(labels)} names for {len(dirs)} run directories")
    runs = [
        {"label": label, "dir": str(d), "metrics": load_metrics(d, score)} for label, d in zip(labels, dirs)
    ]
    first = runs[0]["metrics"]
    diffs = [
        {
            "label": run["label"],
            "metrics": {
                k: None if v is None or first[k] is None else v - first[k] for k, v in run["metrics"].items()
            },
        }
        for run in runs[1:]
    ]
    return {"score": score, "metrics": list(METRIC_NAMES), "runs": runs, "diff_vs_first": diffs}


def write_comparison_figure(result: dict[str, Any], out: Path | str) -> Path:
    """The runs of ``result`` (``compare_runs``) side by side as one PNG at ``out``
    (components/eval/plots.py: ``comparison_figure``)."""
    from components.eval.plots import comparison_figure

    runs = []
    for run in result["runs"]:
        data = load_anytime(run["dir"])
        if not isinstance(data.get(result["score"]), list) or not isinstance(data.get("rows"), list):
            raise InputError(f"{Path(run['dir']) / 'anytime.json'}: malformed anytime.json, no '{result['score']}' matrix")
        runs.append((run["label"], data))
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"--figure {out}: directory {out.parent} does not exist")
    atomic_write_bytes(out, comparison_figure(runs, result["score"]))
    return out


def _table(title: str, rows: list[dict[str, Any]], signed: bool) -> list[str]:
    """Fixed-width text table: one line per run, one column per metric."""
    width = max(len("run"), *(len(r["label"]) for r in rows))
    fmt = "{:+.4f}" if signed else "{:.4f}"
    cols = [max(len(name), 9) for name in METRIC_NAMES]
    lines = [title, "  ".join(["run".ljust(width), *(n.rjust(c) for n, c in zip(METRIC_NAMES, cols))])]
    for r in rows:
        cells = ["n/a" if r["metrics"][n] is None else fmt.format(r["metrics"][n]) for n in METRIC_NAMES]
        lines.append("  ".join([r["label"].ljust(width), *(v.rjust(c) for v, c in zip(cells, cols))]))
    return lines


def format_comparison(result: dict[str, Any]) -> str:
    """Side-by-side metrics table, then the difference-vs-first-run block (if > 1 run)."""
    lines = _table(f"metrics ({result['score']})", result["runs"], signed=False)
    if result["diff_vs_first"]:
        lines += [""] + _table(
            f"difference vs {result['runs'][0]['label']}", result["diff_vs_first"], signed=True
        )
    return "\n".join(lines)
