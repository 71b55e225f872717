"""pipelines/compare.py and components.eval.compare on synthetic run directories."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import REPO_ROOT
from components.errors import InputError
from components.eval.compare import compare_runs, format_comparison
from components.eval.report import write_anytime_outputs
from components.io import atomic_write_json

REPO = REPO_ROOT
NAMES = ["A_all", "A_seen", "A_unseen", "A_final", "learning_accuracy", "BWT", "FWT", "forgetting"]


def write_run(path: Path, acc: dict, f1: dict) -> Path:
    """A run dir holding a minimal anytime.json with the given metric values."""
    atomic_write_json(
        path / "anytime.json",
        {"domains": ["d1"], "rows": ["base", "d1"], "accuracy": [[0.5], [0.6]], "macro_f1": [[0.4], [0.5]],
         "metrics": {"accuracy": acc, "macro_f1": f1}},
    )
    return path


@pytest.fixture
def runs(tmp_path):
    base = dict.fromkeys(NAMES, 0.5) | {"BWT": -0.10, "FWT": None}
    better = dict.fromkeys(NAMES, 0.6) | {"A_final": 0.45, "BWT": -0.02, "FWT": 0.01}
    a = write_run(tmp_path / "ncl", base, dict.fromkeys(NAMES, 0.3))
    b = write_run(tmp_path / "hprompt", better, dict.fromkeys(NAMES, 0.35))
    return a, b


def test_compare_runs_difference(runs):
    result = compare_runs(runs)
    assert [r["label"] for r in result["runs"]] == ["ncl", "hprompt"]
    assert result["metrics"] == NAMES
    diff = result["diff_vs_first"][0]
    assert diff["label"] == "hprompt"
    assert diff["metrics"]["A_all"] == pytest.approx(0.1)
    assert diff["metrics"]["A_final"] == pytest.approx(-0.05)
    assert diff["metrics"]["BWT"] == pytest.approx(0.08)
    assert diff["metrics"]["FWT"] is None  # first run has no FWT
    f1 = compare_runs(runs, labels=["x", "y"], score="macro_f1")
    assert f1["diff_vs_first"][0]["metrics"]["A_all"] == pytest.approx(0.05)
    assert f1["runs"][1]["label"] == "y"


def test_format_comparison(runs):
    text = format_comparison(compare_runs(runs))
    assert "difference vs ncl" in text
    line = text.splitlines()[-1]  # last line: hprompt in the difference block
    assert line.startswith("hprompt")
    assert "+0.1000" in line and "-0.0500" in line and "+0.0800" in line and "n/a" in line


def test_compare_with_real_report_output(tmp_path):
    cells = [
        {"stage": i, "task": t, "seed": 0, "accuracy": 0.5 + 0.1 * i, "macro_f1": 0.5}
        for i in range(3) for t in ("a", "b")
    ]
    write_anytime_outputs(tmp_path / "r1", ["a", "b"], cells, [0], {})
    result = compare_runs([tmp_path / "r1"])
    assert result["runs"][0]["metrics"]["A_final"] == pytest.approx(0.7)
    assert result["diff_vs_first"] == []


def test_bad_inputs_raise(runs, tmp_path):
    with pytest.raises(InputError, match="labels"):
        compare_runs(runs, labels=["only-one"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "anytime.json").write_text(json.dumps({"metrics": {"accuracy": {"A_all": 0.5}}}))
    with pytest.raises(InputError, match="A_seen"):
        compare_runs([tmp_path / "broken"])


def cli(*args):
    return subprocess.run(
        [sys.executable, "pipelines/compare.py", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


def test_cli_table_and_json(runs):
    proc = cli(*runs, "--labels", "base,new")
    assert proc.returncode == 0, proc.stderr
    assert "difference vs base" in proc.stdout and "new" in proc.stdout
    proc = cli(*runs, "--json", "--score", "macro_f1")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["score"] == "macro_f1"
    assert data["diff_vs_first"][0]["metrics"]["A_all"] == pytest.approx(0.05)


def test_cli_missing_file_exits_2(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli(runs[0], empty)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(empty / "anytime.json") in proc.stderr


def test_cli_malformed_json_exits_2(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "anytime.json").write_text("{not json")
    proc = cli(bad)
    assert proc.returncode == 2
    assert "anytime.json" in proc.stderr and "Traceback" not in proc.stderr
