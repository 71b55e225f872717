"""benchmarks/cell_ablation.py: one anytime cell of a finished run re-run under config variants."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import REPO_ROOT, dump_yaml, load_config

REPO = REPO_ROOT
SCRIPT = REPO / "benchmarks" / "cell_ablation.py"


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A run directory as the pipeline leaves it, reduced to what a cell reads: config + stage 0."""
    run = tmp_path_factory.mktemp("run")
    cfg = load_config([REPO / "pipelines/configs/default.yaml"], [
        f"model.name={tiny_model_dir}", "finetune.max_train_examples=24", "finetune.max_eval_examples=30", "finetune.max_test_examples=30",
        "finetune.epochs=1", "finetune.batch_size=8"], base_dir=REPO)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "stages/00-base").mkdir(parents=True)
    shutil.copy(tiny_model_dir / "model.safetensors", run / "stages/00-base/model.safetensors")
    return run


def ablate(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(run), *args, "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_variants_rerun_the_cell_and_report_its_predictions(run_dir):
    done = ablate(run_dir, "--stage", "0", "--task", "restaurant", "--variant", "as run", "--variant", "again",
                  "--variant", "other lr: finetune.lr=3e-3 finetune.head_lr=1e-1")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["as run", "again", "other lr"]
    for r in rows:
        assert sum(r["predicted"].values()) == 30 and 0 <= r["accuracy"] <= 1 and 0 < r["test_majority"] <= 1
        assert len(r["dev_accuracy"]) >= 1
    # the same config twice is the same cell (seeded); an override reaches the fine-tuning
    assert {k: v for k, v in rows[0].items() if k not in ("variant", "wall_time_s")} == \
           {k: v for k, v in rows[1].items() if k not in ("variant", "wall_time_s")}
    assert rows[2]["dev_accuracy"] != rows[0]["dev_accuracy"] or rows[2]["predicted"] != rows[0]["predicted"]


@pytest.mark.parametrize("args, message", [
    (["--stage", "2", "--task", "acl", "--variant", "x"], "--stage 2: no finished stage checkpoint"),
    (["--stage", "0", "--task", "nope", "--variant", "x"], "--task 'nope': the run's domains are"),
    (["--stage", "0", "--task", "acl", "--variant", "x: finetune.lr"], "expected 'LABEL' or 'LABEL: KEY=VALUE"),
    (["--stage", "0", "--task", "acl", "--variant", "x: finetune.nope=1"], "finetune.nope"),
])
def test_bad_input_is_one_line_exit_2(run_dir, args, message):
    done = ablate(run_dir, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_not_a_run_directory_is_one_line_exit_2(tmp_path):
    done = ablate(tmp_path, "--stage", "0", "--task", "acl", "--variant", "x")
    assert done.returncode == 2 and "no config.yaml" in done.stderr
