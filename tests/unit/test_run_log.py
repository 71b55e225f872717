"""A real run from the command line, as a user starts it: a domain whose task is a ClassLabel
dataset saved with save_to_disk, tiny budget, fresh cache. Its log carries the progress lines
(counts, ETA) once each and none of Ray Train's per-report / per-checkpoint lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from components.config import REPO_ROOT
from tests.helpers.hf import NAMES, hf_domain, laptop_as_hf

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # one CLI run, Ray start included

TINY = ["model.stage0=head_warmup", "model.block_size=32", "model.head_warmup.steps=3", "data.max_corpus_docs=200", "pretrain.num_workers=1",
        "pretrain.cpus_per_worker=1", "pretrain.batch_size=8", "pretrain.max_steps=4", "pretrain.checkpoint_every=2",
        "pretrain.log_every=2", "pretrain.eval_blocks=8", "pretrain.end_stage_blocks=8", "finetune.epochs=1",
        "finetune.batch_size=8", "finetune.max_length=48", "finetune.max_train_examples=24",
        "finetune.max_eval_examples=32", "finetune.max_test_examples=32", "eval.probe_max_examples=40",
        "eval.anchor_positions=60", "finetune.cpus_per_cell=1"]


def run_cli(run_dir, cache, folder, *extra):
    cmd = [sys.executable, "-u", str(REPO_ROOT / "pipelines/continual.py"), "--config",
           str(REPO_ROOT / "pipelines/configs/default.yaml"), "--run-dir", str(run_dir), *extra]
    for item in [hf_domain(folder), *TINY, f"data.cache_dir={cache}", "model.head_warmup.corpus=data/laptop/corpus.parquet"]:
        cmd += ["--set", item]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1700)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    folder = laptop_as_hf(tmp / "laptop_hf", n=40)
    proc = run_cli(tmp / "run", tmp / "cache", folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "run", proc.stdout + proc.stderr


def test_classlabel_task_from_save_to_disk_runs_end_to_end(cli_run):
    run_dir, _ = cli_run
    cell = json.loads((run_dir / "cells/s01-laptop-seed0.json").read_text())
    assert cell["label_names"] == NAMES and 0.0 <= cell["accuracy"] <= 1.0
    assert sum(cell["test_label_counts"]) == 32
    anytime = json.loads((run_dir / "anytime.json").read_text())
    assert anytime["rows"] == ["base", "laptop"] and len(anytime["accuracy"]) == 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["data"]["laptop"]) == {"corpus", "train", "dev", "test"}   # datasets fingerprints


def test_log_has_progress_lines_and_no_ray_report_lines(cli_run):
    _, log = cli_run
    assert "Reporting training result" not in log and "Checkpoint successfully created" not in log
    lines = log.splitlines()
    for expected in ("validate: 1/1 domains", "tokenize laptop: 200/200 documents",
                     "stage 0: MLM-head warm-up: 3/3 steps", "stage 1 (laptop): 2/4 steps, loss",
                     "stage 1 (laptop): 4/4 steps", "row 0 (base): 1/1 cells done, laptop seed 0: accuracy",
                     "row 1 (laptop): 1/1 cells done", "run: 1/1 stages, 2/2 cells done"):
        assert any(line.startswith(expected) for line in lines), expected
    assert any(line.startswith("stage 1 (laptop): 2/4 steps") and "ETA" in line for line in lines)
    assert sum("starting from the previous stage's weights" in line for line in lines) == 1
    assert not any(line.startswith("(") and "Reporting" in line for line in lines)
