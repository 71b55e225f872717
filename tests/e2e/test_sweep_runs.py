"""Real Ray Tune sweeps (the real pipeline, MiniLM, tiny budgets): a 3-trial random sweep with ASHA,
sweep.json / best.yaml, best.yaml reruns, resume keeps finished trials; an optuna sweep."""

from __future__ import annotations

import json

from components.config import load_config
from tests.helpers.sweep import sweep_config, write_space


def test_random_sweep_with_asha_stops_the_worst_trial_and_writes_best(tmp_path, shared_cache, ray_session):
    from components.run.execute import Pipeline
    from components.run.plan import prepare
    from components.sweep.runner import plan_sweep, run_sweep

    files, overrides = sweep_config(tmp_path, shared_cache)
    cfg = load_config(files, overrides)
    # grid order is kept with one trial at a time: the third (head_lr ~ 0: cannot learn) is the worst
    space = write_space(tmp_path, "finetune.head_lr: {grid: [2.0e-2, 1.0e-2, 1.0e-12]}\n")
    sweep_dir = tmp_path / "sweep"
    out = run_sweep(cfg, plan_sweep(cfg, space, "random"), sweep_dir, num_samples=1, scheduler_name="asha")
    trials = out["trials"]
    assert len(trials) == 3
    by_lr = {t["params"]["finetune.head_lr"]: t for t in trials}
    assert by_lr[1.0e-12]["status"] == "stopped early" and by_lr[1.0e-12]["stages_reported"] == 1
    assert by_lr[2.0e-2]["status"] == "finished" and by_lr[2.0e-2]["stages_reported"] == 2
    assert out["best"]["params"]["finetune.head_lr"] in (2.0e-2, 1.0e-2)
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert saved["best"]["trial_id"] == out["best"]["trial_id"]
    # pre-training ran once, shared by the trials
    assert len(list(sweep_dir.glob("pretrain-*/stages/01-toy/model.safetensors"))) == 1
    assert not list((sweep_dir / "trials").glob("*/stages"))

    # best.yaml is a config continual.py accepts, and it reruns
    best = load_config([sweep_dir / "best.yaml"])
    assert best.finetune.head_lr == out["best"]["params"]["finetune.head_lr"]
    rerun = tmp_path / "rerun"
    Pipeline(best, rerun, prepare(best)).execute()
    assert (rerun / "anytime.json").is_file()

    # running the sweep again resumes it: finished trials are not rerun
    cells = {p: p.stat().st_mtime for p in (sweep_dir / "trials").glob("*/cells/*.json")}
    again = run_sweep(cfg, plan_sweep(cfg, space, "random"), sweep_dir, num_samples=1, scheduler_name="asha")
    assert {p: p.stat().st_mtime for p in (sweep_dir / "trials").glob("*/cells/*.json")} == cells
    assert again["best"]["trial_id"] == out["best"]["trial_id"]


def test_optuna_sweep_runs_the_pipeline(tmp_path, shared_cache, ray_session):
    """`--search optuna` end to end: two trials of the real pipeline, each with a suggested
    head_lr inside the space, reported after every stage."""
    from components.sweep.runner import plan_sweep, run_sweep

    files, overrides = sweep_config(tmp_path, shared_cache)
    cfg = load_config(files, overrides + ["finetune.epochs=1"])
    space = write_space(tmp_path, "finetune.head_lr: {loguniform: [1.0e-3, 3.0e-2]}\n")
    out = run_sweep(cfg, plan_sweep(cfg, space, "optuna"), tmp_path / "sweep", num_samples=2, scheduler_name="none")
    assert len(out["trials"]) == 2 and {t["status"] for t in out["trials"]} == {"finished"}
    lrs = [t["params"]["finetune.head_lr"] for t in out["trials"]]
    assert all(1.0e-3 <= lr <= 3.0e-2 for lr in lrs) and lrs[0] != lrs[1]
    assert all(t["stages_reported"] == 2 for t in out["trials"])
    assert load_config([tmp_path / "sweep/best.yaml"]).finetune.head_lr == out["best"]["params"]["finetune.head_lr"]
