"""The benchmark results table: every method against its baselines, over independent seeds.

Input: one loaded anytime.json dict per (method, seed) run, or None where the run is missing.
Each run is a whole independent pipeline run with one seed (``seed`` = ``finetune.seeds[0]``),
so its metrics are those of its own matrix (``all_metrics``).

- A method's cell is the mean over its seeds and the 95% Student-t half-width
  (``mean_ci95``: t_{0.975, n-1} * s / sqrt(n)); with one seed there is no interval (n/a).
- ``base`` (no pre-training) is built from row 0 of each reference (ncl) run: the metrics of
  the constant matrix whose every row equals row 0, i.e. a model that is never pre-trained.
  Its A_all / A_final are the mean of row 0; A_seen / A_unseen weight row 0 by the same
  index sets as every other method. Its BWT, FWT and forgetting are 0 by construction and
  are reported as n/a.
- Paired difference vs the reference: for each seed present in both, d_s = metric(method, s)
  - metric(ncl, s); the cell is mean(d) ± the 95% half-width of d. ``significant`` is the
  paired t-test at 5%: the interval excludes 0 (|mean| > half-width; a 1e-12 tolerance
  absorbs float noise). With fewer than 2 paired seeds it is None ("n/a").
- Missing runs (or metrics a run could not compute) are listed, and every cell says how many
  seeds it averages when that is fewer than requested: nothing is silently dropped.
- Per task: task j's score of a run is the mean of its column over rows 1..N (A_all
  restricted to task j: T_j = mean_{i>=1} a[i][j]); ``base``'s is a[0][j]. Each method's per-task
  cell and its paired difference vs the reference are computed as above (``per_task`` and
  ``paired_per_task`` in results.json, a table per score in results.md), so a method that
  helps one task and hurts another shows it.
- Collapse guard: a classification cell whose test predictions are all one class (its record's
  ``test_predicted_counts`` has a single non-zero entry) is flagged, and the flagged cells are
  counted per method (``collapse`` in results.json, a section of results.md). Runs without cell
  records (``cells/*.json``; archives made before they were kept) are counted as unchecked.
  Beside it, per method and task, the test predictions summed over the checked cells against the
  true label counts, and the mean over cells of the total-variation distance between a cell's
  predicted and true label distributions, TV = 1/2 sum_k |p_k/n - t_k/n| (``by_task``): a method
  that drifts to the majority class without collapsing shows it there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.eval.matrix import ALL_SCORES, SCORES
from components.eval.metrics import METRIC_NAMES, all_metrics, mean_ci95
from components.eval.plots import markdown_table

TABLE_METRICS: tuple[str, ...] = ("A_all", "A_seen", "A_unseen", "A_final", "BWT", "FWT", "forgetting")
BASE = "base"
REFERENCE = "ncl"
SCORE_TITLES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "probe_accuracy": "Linear-probe accuracy",
                "probe_macro_f1": "Linear-probe macro-F1"}
_TOL = 1e-12

Runs = Mapping[str, Mapping[int, "dict[str, Any] | None"]]  # method -> seed -> anytime.json dict or None


def run_matrix(anytime: Mapping[str, Any], score: str) -> np.ndarray:
    """The (N+1) x N matrix of ``score`` from an anytime.json dict (null cells -> NaN)."""
    if score not in ALL_SCORES:
        raise ValueError(f"score must be one of {ALL_SCORES}, got {score!r}")
    return np.array([[np.nan if v is None else v for v in row] for row in anytime[score]], dtype=float)


def run_metrics(anytime: Mapping[str, Any], score: str) -> dict[str, float | None]:
    """Every anytime metric (``METRIC_NAMES``) of one single-seed run's matrix."""
    return all_metrics(run_matrix(anytime, score))


def task_scores(anytime: Mapping[str, Any], score: str, base: bool = False) -> dict[str, float | None]:
    """Per task j: T_j = mean over rows i >= 1 of a[i][j] (NaN cells skipped), or a[0][j] for the
    never-pre-trained ``base``; None where no cell has a value."""
    a = run_matrix(anytime, score)
    cols = a[:1] if base else a[1:]
    out = {}
    for j, task in enumerate(anytime["domains"]):
        col = cols[:, j][~np.isnan(cols[:, j])]
        out[task] = float(col.mean()) if col.size else None
    return out


def base_metrics(anytime: Mapping[str, Any], score: str) -> dict[str, float | None]:
    """Metrics of the never-pre-trained model: the constant matrix whose rows all equal row 0.

    BWT, FWT and forgetting (0 by construction) and learning accuracy are None (n/a).
    """
    a = run_matrix(anytime, score)
    out = all_metrics(np.tile(a[0], (a.shape[0], 1)))
    for name in ("learning_accuracy", "BWT", "FWT", "forgetting"):
        out[name] = None
    return out


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` over the non-None values; ci95 None with fewer than 2 values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "ci95": None, "n": 0}
    mean, half = mean_ci95(vals)
    return {"mean": mean, "ci95": half if len(vals) > 1 else None, "n": len(vals)}


def paired_difference(method: Mapping[int, float | None], reference: Mapping[int, float | None]) -> dict[str, Any]:
    """Paired (same-seed) difference method - reference: mean, 95% half-width, n, seeds, significant.

    ``significant`` is True/False (the 95% interval of the differences excludes 0: paired
    t-test at 5%, two-sided) or None when fewer than 2 seeds pair up.
    """
    seeds = sorted(s for s in method if s in reference and method[s] is not None and reference[s] is not None)
    diffs = [float(method[s]) - float(reference[s]) for s in seeds]
    out = summarize(diffs) | {"seeds": seeds}
    if out["n"] < 2:
        out["significant"] = None
    else:
        out["significant"] = bool(abs(out["mean"]) - out["ci95"] > _TOL)
    return out


def _check_domains(runs: Runs) -> list[str]:
    domains = None
    for method, by_seed in runs.items():
        for seed, run in by_seed.items():
            if run is None:
                continue
            if domains is None:
                domains = list(run["domains"])
            elif list(run["domains"]) != domains:
                raise ValueError(f"{method} seed {seed}: domains {run['domains']} differ from {domains}")
    return domains or []


def single_class(cell: Mapping[str, Any]) -> str | None:
    """The one class a cell predicts for every test example (its label name, or its index when
    the record has no names), or None: it predicts several classes, or it is a regression cell."""
    counts = cell.get("test_predicted_counts")
    if not counts or sum(1 for c in counts if c) != 1:
        return None
    k = next(i for i, c in enumerate(counts) if c)
    names = cell.get("label_names")
    return str(names[k]) if names and k < len(names) else str(k)


def collapse_summary(cells: Mapping[str, Mapping[int, "list[dict] | None"]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per method: classification cells checked, cells predicting a single class (each listed
    with seed, stage, task, the class, and its test majority rate), and runs without records."""
    out: dict[str, Any] = {}
    for m, by_seed in cells.items():
        checked, flagged, unchecked, by_task = 0, [], [], {}
        for s in seeds:
            records = by_seed.get(s)
            if records is None:
                unchecked.append(s)
                continue
            for c in sorted(records, key=lambda c: (c["stage"], c["task"])):
                if not c.get("test_predicted_counts"):
                    continue
                checked += 1
                _add_to_task_totals(by_task, c)
                cls = single_class(c)
                if cls is not None:
                    labels = c.get("test_label_counts") or []
                    flagged.append({"seed": s, "stage": c["stage"], "task": c["task"], "predicted": cls,
                                    "majority_rate": max(labels) / sum(labels) if sum(labels) else None})
        for t in by_task.values():
            t["tv_mean"] = t.pop("tv_sum") / t["cells"]
        out[m] = {"cells_checked": checked, "single_class": len(flagged), "flagged": flagged,
                  "seeds_without_records": unchecked, "by_task": by_task}
    return out


def _add_to_task_totals(by_task: dict, cell: Mapping[str, Any]) -> None:
    pred, true = cell["test_predicted_counts"], cell.get("test_label_counts")
    if not true or len(true) != len(pred) or not sum(true):
        return
    t = by_task.setdefault(cell["task"], {"label_names": cell.get("label_names"), "cells": 0, "tv_sum": 0.0,
                                          "predicted": [0] * len(pred), "true": [0] * len(true)})
    n = sum(true)
    t["cells"] += 1
    t["tv_sum"] += 0.5 * sum(abs(p - q) for p, q in zip(pred, true)) / n
    t["predicted"] = [a + b for a, b in zip(t["predicted"], pred)]
    t["true"] = [a + b for a, b in zip(t["true"], true)]


def available_scores(runs: Runs) -> list[str]:
    """The fine-tuning scores, plus the probe scores when every existing run has them."""
    present = [r for by_seed in runs.values() for r in by_seed.values() if r is not None]
    return [s for s in ALL_SCORES if s in SCORES or (present and all(s in r for r in present))]


def build_results(runs: Runs, seeds: Sequence[int], reference: str = REFERENCE,
                  cells: Mapping[str, Mapping[int, "list[dict] | None"]] | None = None,
                  scores_wanted: Sequence[str] | None = None) -> dict[str, Any]:
    """Aggregate the runs: per-method summaries, paired differences vs ``reference``, mean matrices.

    ``runs[method][seed]`` is the run's anytime.json dict or None (missing). The ``base`` row
    is derived from the reference's runs (row 0) when the reference is among the methods.
    ``cells[method][seed]`` (the run's cell records, or None) feeds the collapse guard.
    ``scores_wanted``: the scores to tabulate (default: every score the runs have).
    """
    seeds = list(seeds)
    domains = _check_domains(runs)
    methods = list(runs)
    missing = [{"method": m, "seed": s} for m in methods for s in seeds if runs[m].get(s) is None]
    has_base = reference in runs
    rows = ([BASE] if has_base else []) + methods
    score_names = list(scores_wanted or available_scores(runs))
    per_run: dict[str, dict[str, dict[int, dict[str, float | None]]]] = {}
    for score in score_names:
        per_run[score] = {m: {s: run_metrics(r, score) for s, r in runs[m].items() if r is not None and s in seeds}
                          for m in methods}
        if has_base:
            per_run[score][BASE] = {s: base_metrics(r, score) for s, r in runs[reference].items()
                                    if r is not None and s in seeds}
    scores: dict[str, Any] = {}
    for score in score_names:
        table, paired, matrices = {}, {}, {}
        for m in rows:
            by_seed = per_run[score][m]
            table[m] = {name: summarize([by_seed[s][name] for s in seeds if s in by_seed])
                        | {"values": {str(s): by_seed[s][name] for s in seeds if s in by_seed}}
                        for name in METRIC_NAMES}
            if has_base and m != reference:
                ref = per_run[score][reference]
                paired[m] = {name: paired_difference({s: v[name] for s, v in by_seed.items()},
                                                     {s: v[name] for s, v in ref.items()})
                             for name in METRIC_NAMES}
        tasks = {m: ({s: task_scores(r, score, base=m == BASE) for s, r in runs[reference if m == BASE else m].items()
                      if r is not None and s in seeds}) for m in rows}
        per_task = {m: {t: summarize([by[s][t] for s in seeds if s in by]) for t in domains}
                    for m, by in tasks.items()}
        paired_task = ({m: {t: paired_difference({s: v[t] for s, v in tasks[m].items()},
                                                 {s: v[t] for s, v in tasks[reference].items()}) for t in domains}
                        for m in rows if m != reference} if has_base else {})
        for m in methods:
            mats = [run_matrix(r, score) for s, r in runs[m].items() if r is not None and s in seeds]
            if mats:
                with np.errstate(all="ignore"):
                    matrices[m] = {"n": len(mats), "mean": np.nanmean(np.stack(mats), axis=0).tolist()}
        scores[score] = {"table": table, "paired_vs_reference": paired, "mean_matrix": matrices,
                         "per_task": per_task, "paired_per_task": paired_task}
    notes = [f"Each cell: mean ± 95% Student-t half-width over seeds ({', '.join(map(str, seeds))}); "
             "one seed gives no interval (n/a)."]
    if has_base:
        notes.append(f"'{BASE}' = no pre-training: row 0 of the {reference} runs, scored as a matrix whose every "
                     "row equals row 0 (A_all = A_final = mean of row 0); its BWT/FWT/forgetting are 0 by "
                     "construction and shown as n/a.")
        notes.append(f"Paired difference = method - {reference} on the same seed; significant = the 95% interval "
                     "of the paired differences excludes 0 (paired t-test at 5%); n/a with fewer than 2 seeds.")
    else:
        notes.append(f"'{reference}' is not among the methods: no base row and no paired differences.")
    collapse = collapse_summary({m: (cells or {}).get(m, {}) for m in methods}, seeds)
    return {"reference": reference if has_base else None, "methods": rows, "seeds": seeds, "domains": domains,
            "metrics": list(TABLE_METRICS), "missing": missing, "scores": scores, "notes": notes,
            "collapse": collapse}


# ----------------------------------------------------------------------------- markdown


def _fmt_cell(cell: Mapping[str, Any], n_expected: int, signed: bool = False) -> str:
    if cell["n"] == 0 or cell["mean"] is None:
        return "missing" if cell.get("missing") else "n/a"
    fmt = "{:+.4f}" if signed else "{:.4f}"
    value = 0.0 if abs(cell["mean"]) < _TOL else cell["mean"]  # no "-0.0000" from float noise
    text = fmt.format(value) + " ± " + ("n/a" if cell["ci95"] is None else f"{cell['ci95']:.4f}")
    if cell["n"] < n_expected:
        text += f" (n={cell['n']})"
    return text


def _sig(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**sig**" if flag else "n.s.")


def results_markdown(results: Mapping[str, Any], header: Sequence[tuple[str, Any]] = (),
                     heatmaps: str | None = None) -> str:
    """results.md: header facts, one table per score (rows: methods incl. base), paired
    differences vs the reference with significance, missing runs, the heatmap link."""
    n_seeds = len(results["seeds"])
    ref = results["reference"]
    n_missing = {m: sum(x["method"] == m for x in results["missing"]) for m in results["methods"]}
    n_missing[BASE] = n_missing.get(ref, 0)
    # "missing": no run of the method (or of ncl, for base) exists; a value that is None although
    # runs exist is n/a (base's BWT/FWT/forgetting by construction, or a metric a run cannot compute)
    missing_methods = {m for m, k in n_missing.items() if k == n_seeds}
    lines = ["# Anytime results: every method against its baselines", ""]
    lines += [f"- {k}: {v}" for k, v in header] + ([""] if header else [])
    lines += [f"Domains (in order): {' -> '.join(results['domains']) or 'n/a'}.", ""]
    lines += [f"- {n}" for n in results["notes"]] + [""]
    for score, block in results["scores"].items():
        title = SCORE_TITLES[score]
        lines += [f"## {title}", ""]
        rows = []
        for m in results["methods"]:
            cells = []
            for name in results["metrics"]:
                cell = dict(block["table"][m][name])
                cell["missing"] = m in missing_methods
                cells.append(_fmt_cell(cell, n_seeds))
            rows.append([m, *cells])
        lines += markdown_table(["method", *results["metrics"]], rows) + [""]
        if block["paired_vs_reference"]:
            lines += [f"### {title}: paired difference vs {ref} (method - {ref}, same seed)", ""]
            rows = []
            for m, by_metric in block["paired_vs_reference"].items():
                cells = []
                for name in results["metrics"]:
                    cell = by_metric[name]
                    if cell["n"] == 0:
                        cells.append("missing" if m in missing_methods or ref in missing_methods else "n/a")
                    else:
                        cells.append(f"{_fmt_cell(cell, n_seeds, signed=True)} {_sig(cell['significant'])}")
                rows.append([m, *cells])
            lines += markdown_table(["method", *results["metrics"]], rows)
            lines += ["", "**sig** = the 95% interval of the paired differences excludes 0 (paired t-test, 5%); "
                      "n.s. = it does not; n/a = fewer than 2 paired seeds.", ""]
        lines += _per_task_lines(title, block, results, ref, n_seeds, missing_methods)
    lines += _collapse_lines(results.get("collapse") or {})
    lines += ["## Missing runs", ""]
    if results["missing"]:
        lines += [f"- {m['method']} seed {m['seed']}: no anytime.json" + (f" ({m['reason']})" if m.get("reason")
                                                                          else "") for m in results["missing"]]
        lines += ["", "Cells of these methods average the seeds that exist (n shown when fewer than "
                  f"{n_seeds})."]
    else:
        lines.append("None: every (method, seed) run finished.")
    lines.append("")
    if heatmaps:
        lines += ["## Accuracy matrices", "", f"![accuracy matrices]({heatmaps})", "",
                  "Mean over seeds; row i = after pre-training stage i (0 = base), column j = fine-tuned on "
                  "task j; left of the red staircase = seen domains.", ""]
    return "\n".join(lines)


def _per_task_lines(title: str, block: Mapping[str, Any], results: Mapping[str, Any], ref: str | None,
                    n_seeds: int, missing_methods: set[str]) -> list[str]:
    """Per-task table: each task's column mean over rows 1..N (base: row 0), and its paired
    difference vs the reference."""
    per_task, paired = block.get("per_task"), block.get("paired_per_task")
    if not per_task:
        return []
    tasks = results["domains"]
    lines = [f"### {title} per task (column mean over rows 1..N; base: row 0)", ""]
    rows = []
    for m in results["methods"]:
        cells = [_fmt_cell(dict(per_task[m][t], missing=m in missing_methods), n_seeds) for t in tasks]
        if paired and m in paired:
            cells = [c if paired[m][t]["n"] == 0 else
                     f"{c}; {_fmt_cell(paired[m][t], n_seeds, signed=True)} {_sig(paired[m][t]['significant'])}"
                     for c, t in zip(cells, tasks)]
        rows.append([m, *cells])
    note = f" Cells: mean ± 95% half-width; then method - {ref} (paired, same seed)." if paired else ""
    return lines + markdown_table(["method", *tasks], rows) + ["", note.strip(), ""]


def _collapse_lines(collapse: Mapping[str, Any]) -> list[str]:
    if not collapse:
        return []
    lines = ["## Collapse guard: cells that predict a single class", "",
             "A cell is flagged when every test example gets the same predicted class (a fine-tuning "
             "collapse to one class, usually the majority class).", ""]
    rows = []
    for m, c in collapse.items():
        unchecked = c["seeds_without_records"]
        rows.append([m, str(c["cells_checked"]), f"**{c['single_class']}**" if c["single_class"] else "0",
                     ", ".join(map(str, unchecked)) if unchecked else "-"])
    lines += markdown_table(["method", "cells checked", "single-class cells", "seeds without cell records"], rows) + [""]
    flagged = [(m, f) for m, c in collapse.items() for f in c["flagged"]]
    for m, f in flagged:
        rate = "" if f["majority_rate"] is None else f" (test majority rate {f['majority_rate']:.3f})"
        lines.append(f"- {m} seed {f['seed']}, stage {f['stage']}, task {f['task']}: every test example "
                     f"'{f['predicted']}'{rate}")
    lines += [""] if flagged else []
    tasks = sorted({t for c in collapse.values() for t in c.get("by_task", {})})
    if not tasks:
        return lines
    lines += ["### Predicted classes per task (test predictions summed over the checked cells)", "",
              "Each cell: predicted / true count per class; TV = mean over cells of the total-variation "
              "distance between the predicted and the true label distribution.", ""]
    for task in tasks:
        found = [(m, c["by_task"][task]) for m, c in collapse.items() if task in c.get("by_task", {})]
        n = len(found[0][1]["true"])
        names = found[0][1]["label_names"] or [str(k) for k in range(n)]
        rows = [[m, str(t["cells"]), f"{t['tv_mean']:.4f}", *(f"{p} / {q}" for p, q in zip(t["predicted"], t["true"]))]
                for m, t in found]
        head = ["method", "cells", "TV", *names]
        lines += [f"{task}:", ""] + markdown_table(head, rows) + [""]
    return lines


# ----------------------------------------------------------------------------- loading


def load_cells(out_dir: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, list[dict] | None]]:
    """``out_dir/<method>/seed<s>/cells/*.json`` (the run's cell records) for every (method,
    seed); None where the run has no cells/ directory."""
    out: dict[str, dict[int, list[dict] | None]] = {}
    for m in methods:
        out[m] = {}
        for s in seeds:
            d = Path(out_dir) / m / f"seed{s}" / "cells"
            out[m][s] = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else None
    return out


def load_runs(out_dir: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict | None]]:
    """``out_dir/<method>/seed<s>/anytime.json`` for every (method, seed); None where absent."""
    runs: dict[str, dict[int, dict | None]] = {}
    for m in methods:
        runs[m] = {}
        for s in seeds:
            path = Path(out_dir) / m / f"seed{s}" / "anytime.json"
            runs[m][s] = json.loads(path.read_text()) if path.is_file() else None
    return runs
