"""Progress lines: counts, ETA over this process's own work (resume-correct), one line per
update without a terminal, a tqdm bar with one; the stage follower; Ray's report-line logger."""

from __future__ import annotations

import io
import json
import logging

import pytest

from components.progress import Progress, RunProgress, eta_seconds, fmt_duration
from components.run.ray_stage import StageProgress, quiet_report_lines


def test_eta_counts_only_work_done_here():
    # resumed at step 20 of 100; 5 steps in 10 s -> 2 s/step x 75 steps left
    assert eta_seconds(10.0, 25, 100, start=20) == pytest.approx(150.0)
    assert eta_seconds(10.0, 20, 100, start=20) is None
    assert [fmt_duration(s) for s in (4.4, 65, 7300)] == ["4s", "1m05s", "2h01m"]


def test_one_line_per_update_without_a_terminal():
    out = io.StringIO()
    p = Progress("row 2 (acl)", 3, "cells done", start=1, every_s=0.0, bar=False, stream=out)
    p.update(2, "laptop seed 0: accuracy 0.700", elapsed=30.0)
    p.update(3, "acl seed 0: accuracy 0.600", elapsed=50.0)
    assert out.getvalue().splitlines() == [
        "row 2 (acl): 2/3 cells done, laptop seed 0: accuracy 0.700, ETA 30s",
        "row 2 (acl): 3/3 cells done, acl seed 0: accuracy 0.600"]


def test_updates_are_throttled_but_the_last_one_prints():
    out = io.StringIO()
    p = Progress("tokenize acl", 5000, "documents", every_s=3600, bar=False, stream=out)
    for done in (1000, 2000, 3000, 4000, 5000):
        p.update(done)
    assert [line.split(", ")[0] for line in out.getvalue().splitlines()] == [
        "tokenize acl: 1,000/5,000 documents", "tokenize acl: 5,000/5,000 documents"]


def test_a_terminal_gets_a_live_bar():
    out = io.StringIO()
    p = Progress("stage 1 (laptop)", 4, "steps", bar=True, stream=out)
    p.update(2, "loss 2.1")
    p.close()
    assert "\r" in out.getvalue() and "2/4" in out.getvalue() and "stage 1 (laptop)" in out.getvalue()


def test_stage_follower_says_resumed_once_and_times_only_new_steps(tmp_path, capsys):
    jsonl = tmp_path / "pretrain_stage01.jsonl"
    jsonl.write_text(json.dumps({"step": 2, "total_steps": 10, "loss": 3.0, "tokens_per_s": 10}) + "\n")  # an earlier process
    follower = StageProgress(jsonl, "stage 1 (laptop)")
    with open(jsonl, "a") as f:
        for step, elapsed in ((6, 2.0), (8, 4.0)):
            f.write(json.dumps({"step": step, "total_steps": 10, "resumed_from": 4, "loss": 2.5,
                                "tokens_per_s": 870.0, "elapsed_s": elapsed}) + "\n")
        f.write('{"step": 10, "tot')   # a line still being written is left for the next poll
    follower.drain()
    assert capsys.readouterr().out.splitlines() == [
        "stage 1 (laptop): resuming the interrupted stage from its checkpoint at step 4 (10 steps)",
        "stage 1 (laptop): 6/10 steps, loss 2.5000, 870 tok/s, ETA 4s",    # 2 s / 2 steps x 4 left
        "stage 1 (laptop): 8/10 steps, loss 2.5000, 870 tok/s, ETA 2s"]


def test_run_eta_from_measured_stage_and_cell_times():
    run = RunProgress(stages=3, cells=12, parallel_cells=2, cells_done=3)
    assert run.eta() is None and "ETA" not in run.line()
    run.stage_finished(100.0)
    run.cell_finished(40.0)
    # 2 stages x 100 s + 8 cells x 40 s / 2 at once
    assert run.eta() == pytest.approx(360.0)
    assert run.line().startswith("run: 1/3 stages, 4/12 cells done, elapsed ") and run.line().endswith("ETA 6m00s")


def test_ray_report_line_logger_follows_the_log_level():
    from ray.train.v2._internal.execution import context

    logger = logging.getLogger(context.__file__)
    before = logger.level
    try:
        quiet_report_lines("WARNING")
        assert not logger.isEnabledFor(logging.INFO)
        quiet_report_lines("INFO")
        assert logger.isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


def test_kill_soak_recognises_every_phase_in_the_pipelines_own_progress_lines():
    """benchmarks/kill_soak.py times its kills from these lines: each phase must be found in the
    lines the pipeline prints (a pattern that matches nothing leaves that phase without kills)."""
    import importlib.util

    from components.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("kill_soak", REPO_ROOT / "benchmarks/kill_soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)

    def line(label: str, done: int, total: int, unit: str, note: str = "") -> str:
        p = Progress(label, total, unit, bar=False, stream=io.StringIO())
        p.done = done
        return p.line(note)

    printed = {
        "pre-training": line("stage 1 (laptop)", 3, 1200, "steps", "loss 5.0779, 220 tok/s"),
        "stage finished": "stage 1 (laptop): done in 39s",
        "diagnostics": "stage 1: held-out MLM loss laptop 5.253, acl 6.701",
        "cells": line("row 1 (laptop)", 1, 2, "cells done", "laptop seed 0: accuracy 0.534"),
        "report writing": "report: writing anytime.json/.csv, heatmaps, plots, report.md",
    }
    for phase, text in printed.items():
        assert [k for pattern, k in soak.PROGRESS if pattern.match(text)] == [phase], text
