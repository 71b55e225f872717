"""components.eval.results_table and benchmarks/anytime_results.py on hand-built runs.

Two methods x 3 seeds, N = 2 domains. Every expected value below is worked out by hand from
the matrices (docs/design.md, section 4); intervals use t_{0.975, 2} = 4.3027.
"""

from __future__ import annotations

import importlib.util
import json
import math
from statistics import mean, stdev

import pytest

from components.config import REPO_ROOT
from components.errors import InputError
from components.eval.plots import anytime_heatmaps_png
from components.eval.results_table import build_results, load_runs, results_markdown

REPO = REPO_ROOT
T2 = 4.3027  # t_{0.975, df=2}
DOMAINS = ["d1", "d2"]
COLUMNS = ["A_all", "A_seen", "A_unseen", "A_final", "BWT", "FWT", "forgetting"]


def run(acc: list[list[float]]) -> dict:
    """An anytime.json-like dict of one single-seed run; macro-F1 = accuracy - 0.1."""
    return {"domains": DOMAINS, "rows": ["base", *DOMAINS], "accuracy": acc,
            "macro_f1": [[round(v - 0.1, 10) for v in row] for row in acc]}


# ncl, seed k: every cell + 0.02k.   A_all = (.70+.45+.65+.80)/4 = .65 (+.02k)
#   A_seen = (.70+.65+.80)/3, A_unseen = .45, A_final = .725, BWT = .65-.70 = -.05,
#   FWT = a[1][2]-a[0][2] = .45-.40 = .05, forgetting = .70-.65 = .05
NCL = {
    0: run([[0.50, 0.40], [0.70, 0.45], [0.65, 0.80]]),
    1: run([[0.52, 0.42], [0.72, 0.47], [0.67, 0.82]]),
    2: run([[0.54, 0.44], [0.74, 0.49], [0.69, 0.84]]),
}
# hprompt, seed k: ncl's row 0; rows 1-2 = ncl + (.02, .03, .04); a[2][2] also + (.10, -.10, .06)
HPROMPT = {
    0: run([[0.50, 0.40], [0.72, 0.47], [0.67, 0.92]]),
    1: run([[0.52, 0.42], [0.75, 0.50], [0.70, 0.75]]),
    2: run([[0.54, 0.44], [0.78, 0.53], [0.73, 0.94]]),
}
# Per-seed metrics worked out by hand.
NCL_A_ALL = [0.65, 0.67, 0.69]
HP_A_ALL = [(0.72 + 0.47 + 0.67 + 0.92) / 4, (0.75 + 0.50 + 0.70 + 0.75) / 4, (0.78 + 0.53 + 0.73 + 0.94) / 4]
HP_A_FINAL = [(0.67 + 0.92) / 2, (0.70 + 0.75) / 2, (0.73 + 0.94) / 2]
NCL_A_FINAL = [0.725, 0.745, 0.765]


def half(values: list[float]) -> float:
    return T2 * stdev(values) / math.sqrt(3)


@pytest.fixture
def runs() -> dict:
    return {"ncl": dict(NCL), "hprompt": dict(HPROMPT)}


def test_means_and_intervals(runs):
    res = build_results(runs, [0, 1, 2])
    assert res["methods"] == ["base", "ncl", "hprompt"]
    acc = res["scores"]["accuracy"]["table"]
    a = acc["ncl"]["A_all"]
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.67)
    assert a["ci95"] == pytest.approx(T2 * 0.02 / math.sqrt(3), rel=1e-4)
    assert acc["ncl"]["A_seen"]["mean"] == pytest.approx((0.70 + 0.65 + 0.80) / 3 + 0.02)
    assert acc["ncl"]["A_unseen"]["mean"] == pytest.approx(0.47)
    assert acc["ncl"]["BWT"]["mean"] == pytest.approx(-0.05) and acc["ncl"]["BWT"]["ci95"] == pytest.approx(0.0)
    assert acc["ncl"]["FWT"]["mean"] == pytest.approx(0.05)
    assert acc["ncl"]["forgetting"]["mean"] == pytest.approx(0.05)
    h = acc["hprompt"]["A_all"]
    assert HP_A_ALL == pytest.approx([0.695, 0.675, 0.745])
    assert h["mean"] == pytest.approx(0.705) and h["ci95"] == pytest.approx(half(HP_A_ALL), rel=1e-4)
    assert acc["hprompt"]["A_final"]["mean"] == pytest.approx(mean(HP_A_FINAL))
    assert acc["hprompt"]["FWT"]["mean"] == pytest.approx(0.08)  # .07, .08, .09
    f1 = res["scores"]["macro_f1"]["table"]["ncl"]["A_all"]
    assert f1["mean"] == pytest.approx(0.57) and f1["ci95"] == pytest.approx(a["ci95"], rel=1e-4)


def test_base_row_is_row_zero_of_ncl(runs):
    acc = build_results(runs, [0, 1, 2])["scores"]["accuracy"]["table"]["base"]
    # seed 0 row 0 = [.50, .40]: A_all = A_final = .45; A_seen = (.50 + .50 + .40)/3; A_unseen = .40
    assert acc["A_all"]["values"]["0"] == pytest.approx(0.45)
    assert acc["A_final"]["values"]["0"] == pytest.approx(0.45)
    assert acc["A_seen"]["values"]["0"] == pytest.approx(1.40 / 3)
    assert acc["A_unseen"]["values"]["0"] == pytest.approx(0.40)
    assert acc["A_all"]["mean"] == pytest.approx(0.47)
    for name in ("BWT", "FWT", "forgetting"):
        assert acc[name]["mean"] is None and acc[name]["n"] == 0


def test_paired_differences_and_significance(runs):
    paired = build_results(runs, [0, 1, 2])["scores"]["accuracy"]["paired_vs_reference"]
    assert set(paired) == {"base", "hprompt"}
    hp = paired["hprompt"]
    d_all = [h - n for h, n in zip(HP_A_ALL, NCL_A_ALL)]  # .045, .005, .055
    assert hp["A_all"]["mean"] == pytest.approx(0.035)
    assert hp["A_all"]["ci95"] == pytest.approx(half(d_all), rel=1e-4)  # 0.0657 > 0.035
    assert hp["A_all"]["significant"] is False and hp["A_all"]["seeds"] == [0, 1, 2]
    d_final = [h - n for h, n in zip(HP_A_FINAL, NCL_A_FINAL)]  # .07, -.02, .07
    assert hp["A_final"]["mean"] == pytest.approx(0.04) and hp["A_final"]["significant"] is False
    assert hp["A_final"]["ci95"] == pytest.approx(half(d_final), rel=1e-4)
    # A_unseen and FWT differences: .02, .03, .04 -> mean .03 ± 4.3027 * .01 / sqrt(3) = .0248: significant
    for name in ("A_unseen", "FWT"):
        assert hp[name]["mean"] == pytest.approx(0.03)
        assert hp[name]["ci95"] == pytest.approx(T2 * 0.01 / math.sqrt(3), rel=1e-4)
        assert hp[name]["significant"] is True
    # BWT: -.05 for both methods on every seed -> difference 0 (float noise): not significant
    assert hp["BWT"]["mean"] == pytest.approx(0.0, abs=1e-12) and hp["BWT"]["significant"] is False
    # base - ncl on A_all: .45 - .65 = -.20 on every seed: zero spread, significant
    assert paired["base"]["A_all"]["mean"] == pytest.approx(-0.20)
    assert paired["base"]["A_all"]["significant"] is True
    assert paired["base"]["BWT"]["significant"] is None and paired["base"]["BWT"]["n"] == 0


def test_per_task_scores_and_paired_differences(runs):
    res = build_results(runs, [0, 1, 2])["scores"]["accuracy"]
    # ncl seed k: d1 = (.70 + .65)/2 + .02k, d2 = (.45 + .80)/2 + .02k
    assert res["per_task"]["ncl"]["d1"]["mean"] == pytest.approx(0.695)
    assert res["per_task"]["ncl"]["d2"]["mean"] == pytest.approx(0.645)
    # base = row 0: d1 = .50 + .02k
    assert res["per_task"]["base"]["d1"]["mean"] == pytest.approx(0.52)
    hp = res["paired_per_task"]["hprompt"]
    # d1: hprompt (.695, .725, .755) - ncl (.675, .695, .715) = .02, .03, .04 -> significant
    assert hp["d1"]["mean"] == pytest.approx(0.03) and hp["d1"]["significant"] is True
    assert hp["d1"]["ci95"] == pytest.approx(T2 * 0.01 / math.sqrt(3), rel=1e-4)
    # d2: (.695, .625, .735) - (.625, .645, .665) = .07, -.02, .07 -> not significant
    assert hp["d2"]["mean"] == pytest.approx(0.04) and hp["d2"]["significant"] is False
    assert res["paired_per_task"]["base"]["d1"]["mean"] == pytest.approx(-0.175)
    assert "ncl" not in res["paired_per_task"]
    md = results_markdown(build_results(runs, [0, 1, 2]))
    assert "### Accuracy per task" in md and "| method | d1 | d2 |" in md
    assert "0.7250 ± " in md and "+0.0300 ± 0.0248 **sig**" in md.split("### Accuracy per task")[1]


def test_one_seed_gives_na(runs):
    one = {m: {0: r[0]} for m, r in runs.items()}
    res = build_results(one, [0])
    cell = res["scores"]["accuracy"]["table"]["hprompt"]["A_all"]
    assert cell["mean"] == pytest.approx(0.695) and cell["ci95"] is None and cell["n"] == 1
    d = res["scores"]["accuracy"]["paired_vs_reference"]["hprompt"]["A_all"]
    assert d["mean"] == pytest.approx(0.045) and d["significant"] is None and d["ci95"] is None
    md = results_markdown(res)
    assert "0.6950 ± n/a" in md and "+0.0450 ± n/a n/a" in md
    assert not any("sig" in line or "n.s." in line for line in md.splitlines() if line.startswith("| "))


def test_markdown_has_every_row_and_column(runs):
    res = build_results(runs, [0, 1, 2])
    md = results_markdown(res, [("label", "unit-test"), ("command", "`python x`")], heatmaps="heatmaps.png")
    assert "- label: unit-test" in md and "- command: `python x`" in md and "(heatmaps.png)" in md
    for title in ("## Accuracy", "## Macro-F1", "paired difference vs ncl"):
        assert title in md
    header = "| method | " + " | ".join(COLUMNS) + " |"
    assert md.count(header) == 4  # two scores x (table + paired differences)
    for method in ("base", "ncl", "hprompt"):
        assert f"| {method} |" in md
    assert "| ncl | 0.6700 ± 0.0497 |" in md  # 4.3027 * .02 / sqrt(3) = .04968
    assert "+0.0300 ± 0.0248 **sig**" in md and "+0.0350 ± 0.0657 n.s." in md
    assert "None: every (method, seed) run finished." in md


def test_missing_runs_are_reported(runs):
    runs["hprompt"][2] = None
    runs["uegp"] = {0: None, 1: None, 2: None}
    res = build_results(runs, [0, 1, 2])
    assert {"method": "hprompt", "seed": 2} in res["missing"]
    assert sum(m["method"] == "uegp" for m in res["missing"]) == 3
    assert res["methods"] == ["base", "ncl", "hprompt", "uegp"]
    acc = res["scores"]["accuracy"]
    assert acc["table"]["hprompt"]["A_all"]["n"] == 2
    assert acc["table"]["hprompt"]["A_all"]["mean"] == pytest.approx((0.695 + 0.675) / 2)
    assert acc["paired_vs_reference"]["hprompt"]["A_all"]["seeds"] == [0, 1]
    assert acc["table"]["uegp"]["A_all"]["n"] == 0
    md = results_markdown(res)
    assert "(n=2)" in md and "- hprompt seed 2: no anytime.json" in md and "- uegp seed 0" in md
    assert "| uegp | missing | missing |" in md


def test_base_constructs_stay_na_when_some_reference_seeds_are_missing(runs):
    runs["ncl"][2] = None  # base = row 0 of ncl: 2 of 3 seeds left
    md = results_markdown(build_results(runs, [0, 1, 2]))
    base = next(line for line in md.splitlines() if line.startswith("| base |"))
    cells = [c.strip() for c in base.strip("|").split("|")][1:]  # A_all .. forgetting
    assert cells[0].endswith("(n=2)") and cells[4:] == ["n/a", "n/a", "n/a"]  # BWT/FWT/forgetting by construction
    runs["ncl"] = {0: None, 1: None, 2: None}
    md = results_markdown(build_results(runs, [0, 1, 2]))
    assert next(line for line in md.splitlines() if line.startswith("| base |")).count("missing") == 7


def test_load_runs_and_heatmaps(tmp_path, runs):
    for m, by_seed in runs.items():
        for s, r in by_seed.items():
            if (m, s) != ("hprompt", 1):
                (tmp_path / m / f"seed{s}").mkdir(parents=True)
                (tmp_path / m / f"seed{s}" / "anytime.json").write_text(json.dumps(r))
    loaded = load_runs(tmp_path, ["ncl", "hprompt"], [0, 1, 2])
    assert loaded["hprompt"][1] is None and loaded["ncl"][2] == NCL[2]
    import numpy as np

    png = anytime_heatmaps_png({"ncl": np.array(NCL[0]["accuracy"]), "full": np.full((3, 2), np.nan)}, DOMAINS)
    assert png.startswith(b"\x89PNG")


def _script():
    spec = importlib.util.spec_from_file_location("anytime_results", REPO / "benchmarks/anytime_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_runs(out, runs: dict) -> None:
    """OUT/<method>/seed<s>/anytime.json for every run, the layout the script reads."""
    for m, by_seed in runs.items():
        for s, r in by_seed.items():
            (out / m / f"seed{s}").mkdir(parents=True)
            (out / m / f"seed{s}" / "anytime.json").write_text(json.dumps(r))


def test_script_report_only(tmp_path, runs):
    write_runs(tmp_path, runs)
    script = _script()
    code = script.main(["--config", str(REPO / "pipelines/configs/anytime6.yaml"), "--methods", "ncl,hprompt,full",
                        "--seeds", "0,1,2", "--out-dir", str(tmp_path), "--label", "unit", "--report-only"])
    assert code == 0
    md = (tmp_path / "results.md").read_text()
    assert "- label: unit" in md and "--report-only" in md and "git sha" in md and "hardware" in md
    assert "- full seed 0: no anytime.json (not run or unfinished)" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["methods"] == ["base", "ncl", "hprompt", "full"]
    assert (tmp_path / "heatmaps.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(InputError, match="no preset 'nope'"):
        script.main(["--config", str(REPO / "pipelines/configs/anytime6.yaml"), "--methods", "ncl,nope",
                     "--out-dir", str(tmp_path), "--report-only"])
    with pytest.raises(InputError, match="row 0"):
        script.main(["--config", str(REPO / "pipelines/configs/anytime6.yaml"), "--methods", "base",
                     "--out-dir", str(tmp_path), "--report-only"])


def test_script_pairs_against_another_reference(tmp_path, runs):
    write_runs(tmp_path, runs)
    script = _script()
    args = ["--config", str(REPO / "pipelines/configs/anytime6.yaml"), "--seeds", "0,1,2", "--out-dir", str(tmp_path),
            "--report-only"]
    assert script.main([*args, "--methods", "ncl,hprompt", "--reference", "hprompt"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["reference"] == "hprompt" and list(data["scores"]["accuracy"]["paired_vs_reference"]) == ["base", "ncl"]
    paired = data["scores"]["accuracy"]["paired_vs_reference"]["ncl"]["A_all"]
    assert paired["mean"] == pytest.approx(mean(n - h for n, h in zip(NCL_A_ALL, HP_A_ALL)))
    assert "paired difference vs hprompt (method - hprompt" in (tmp_path / "results.md").read_text()
    with pytest.raises(InputError, match="--reference: 'coca' is not among --methods"):
        script.main([*args, "--methods", "ncl,hprompt", "--reference", "coca"])


def test_archive_keeps_the_small_files_in_a_layout_report_only_reads(tmp_path, runs):
    script = _script()
    run_dir = tmp_path / "out" / "ncl" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "anytime.json").write_text(json.dumps(runs["ncl"][0]))
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "stages").mkdir()
    (run_dir / "stages" / "model.safetensors").write_bytes(b"\0" * 1024)
    script.archive_run(run_dir, tmp_path / "archive" / "ncl" / "seed0")
    kept = sorted(p.name for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert kept == ["anytime.json", "config.yaml"]  # no checkpoints, no temp files
    assert load_runs(tmp_path / "archive", ["ncl"], [0])["ncl"][0] == runs["ncl"][0]


def test_pending_runs_are_seed_major_and_skip_finished(tmp_path, runs):
    (tmp_path / "ncl" / "seed0").mkdir(parents=True)
    (tmp_path / "ncl" / "seed0" / "anytime.json").write_text(json.dumps(runs["ncl"][0]))
    (tmp_path / "hprompt" / "seed0").mkdir(parents=True)  # started, unfinished: still pending
    assert _script().pending_runs(tmp_path, ["ncl", "hprompt", "full"], [0, 1]) == [
        ("hprompt", 0), ("full", 0), ("ncl", 1), ("hprompt", 1), ("full", 1)]


def cell(stage: int, task: str, predicted: list[int], labels: list[int] | None = None) -> dict:
    return {"stage": stage, "task": task, "seed": 0, "label_names": ["a", "b", "c"][:len(predicted)],
            "test_predicted_counts": predicted, "test_label_counts": labels or [6, 3, 1][:len(predicted)]}


def test_collapse_guard_flags_single_class_cells_and_counts_them_per_method(runs):
    cells = {"ncl": {0: [cell(0, "d1", [5, 3, 2]), cell(1, "d1", [9, 1, 0])], 1: [cell(1, "d2", [4, 6])], 2: None},
             "hprompt": {0: [cell(1, "d1", [0, 10, 0]), cell(2, "d2", [10, 0])],
                         1: [cell(2, "d1", [0, 0, 10]), {"stage": 1, "task": "reg", "test_predicted_counts": None}],
                         2: []}}
    res = build_results(runs, [0, 1, 2], cells=cells)
    col = res["collapse"]
    by_task = col["ncl"]["by_task"]
    assert {k: v for k, v in col["ncl"].items() if k != "by_task"} == {
        "cells_checked": 3, "single_class": 0, "flagged": [], "seeds_without_records": [2]}
    # predictions summed per task against the true counts; TV = 1/2 sum |p - t| / n, averaged over cells
    assert by_task["d1"]["predicted"] == [14, 4, 2] and by_task["d1"]["true"] == [12, 6, 2]
    assert by_task["d1"]["cells"] == 2 and by_task["d1"]["tv_mean"] == pytest.approx((0.1 + 0.3) / 2)
    assert by_task["d2"] == {"label_names": ["a", "b"], "cells": 1, "predicted": [4, 6], "true": [6, 3],
                             "tv_mean": pytest.approx(2.5 / 9)}
    assert col["hprompt"]["by_task"]["d1"]["predicted"] == [0, 10, 10]
    assert col["hprompt"]["cells_checked"] == 3 and col["hprompt"]["single_class"] == 3  # regression cell skipped
    assert col["hprompt"]["flagged"][0] == {"seed": 0, "stage": 1, "task": "d1", "predicted": "b",
                                            "majority_rate": 0.6}
    md = results_markdown(res)
    assert "## Collapse guard: cells that predict a single class" in md
    assert "| hprompt | 3 | **3** | - |" in md and "| ncl | 3 | 0 | 2 |" in md
    assert "- hprompt seed 1, stage 2, task d1: every test example 'c' (test majority rate 0.600)" in md
    assert "### Predicted classes per task" in md
    assert "| ncl | 2 | 0.2000 | 14 / 12 | 4 / 6 | 2 / 2 |" in md and "| hprompt | 1 | 0.3889 | 10 / 6 | 0 / 3 |" in md
    json.dumps(res)  # results.json stays serialisable


def test_script_counts_collapsed_cells_from_archived_cell_records(tmp_path, runs):
    script = _script()
    for m, by_seed in runs.items():
        for s, r in by_seed.items():
            run_dir = tmp_path / "out" / m / f"seed{s}"
            (run_dir / "cells").mkdir(parents=True)
            (run_dir / "anytime.json").write_text(json.dumps(r))
            predicted = [0, 7] if (m, s) == ("hprompt", 2) else [3, 4]
            (run_dir / "cells" / "s01-d1-seed0.json").write_text(json.dumps(cell(1, "d1", predicted, [5, 2])))
            script.archive_run(run_dir, tmp_path / "archive" / m / f"seed{s}")
    assert (tmp_path / "archive" / "hprompt" / "seed2" / "cells" / "s01-d1-seed0.json").is_file()
    code = script.main(["--config", str(REPO / "pipelines/configs/default.yaml"), "--methods", "ncl,hprompt",
                        "--seeds", "0,1,2", "--out-dir", str(tmp_path / "archive"), "--report-only"])
    assert code == 0
    data = json.loads((tmp_path / "archive" / "results.json").read_text())
    assert {m: c["single_class"] for m, c in data["collapse"].items()} == {"ncl": 0, "hprompt": 1}
    assert "- hprompt seed 2, stage 1, task d2" not in (tmp_path / "archive" / "results.md").read_text()
    assert "- hprompt seed 2, stage 1, task d1: every test example 'b'" in (tmp_path / "archive" / "results.md").read_text()
