"""Reliability (issue #20): valid input never crashes, invalid input stops before any training
with one line and exit 2, secrets never reach a file or the terminal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.config import REPO_ROOT, dump_yaml, load_config, method_name, stored_dict
from components.errors import InputError
from components.eval.matrix import build_matrix, cell_mean_ci95
from components.eval.metrics import all_metrics
from components.io import redact
from tests.helpers.cli import config_for, domain, expect_error, run_cli  # noqa: F401  (fixture)

DEFAULT = REPO_ROOT / "pipelines/configs/default.yaml"


# ----------------------------------------------------------------------------- regression tasks


def test_regression_score_is_pearson_r_negative_or_nan():
    from components.finetune.loop import score

    gold = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert score(np.array([[3.0], [2.0], [1.0], [0.0]]), gold, True)["accuracy"] == pytest.approx(-1.0)
    constant = score(np.full((4, 1), 0.5), gold, True)
    assert math.isnan(constant["accuracy"]) and math.isnan(constant["macro_f1"])
    assert math.isnan(score(np.array([[1.0]]), torch.tensor([1.0]), True)["accuracy"])


def test_constant_regression_predictor_finishes_with_a_null_score(tiny_model_dir):
    """Every dev r is NaN (the head ignores its input): the run keeps the first state, no crash."""
    from components.config import FinetuneConfig
    from components.finetune.loop import finetune
    from components.models.loading import masked_lm_from_state
    from components.models.masked_lm import MaskedLM
    from components.models.task_model import TaskModel
    from transformers import AutoModelForMaskedLM

    weights = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).state_dict()
    model = TaskModel(MaskedLM(masked_lm_from_state(str(tiny_model_dir), weights)), 1, dropout=0.0)
    with torch.no_grad():
        model.head.weight.zero_()
    model.head.weight.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    data = {"input_ids": torch.randint(1000, 2000, (8, 6), generator=g), "attention_mask": torch.ones(8, 6, dtype=torch.long),
            "labels": torch.arange(8, dtype=torch.float)}
    cfg = FinetuneConfig(epochs=2, batch_size=4, evals_per_epoch=2)
    result = finetune(model, [], data, data, data, cfg, 0, torch.device("cpu"), regression=True, keep_best_state=True)
    assert math.isnan(result.accuracy) and math.isnan(result.best_dev)
    assert result.best_state is not None and len(result.dev_curve) == 4


def test_matrix_takes_negative_and_null_regression_scores():
    domains = ["reg", "cls"]
    cells = [{"stage": i, "task": "reg", "seed": 0, "accuracy": r, "macro_f1": r, "label_names": None}
             for i, r in enumerate([-0.25, None, 0.5])]
    cells += [{"stage": i, "task": "cls", "seed": 0, "accuracy": 0.6, "macro_f1": 0.5, "label_names": ["a", "b"]}
              for i in range(3)]
    a = build_matrix(cells, domains, 2, "accuracy")
    assert a[0, 0] == -0.25 and math.isnan(a[1, 0]) and a[2, 0] == 0.5
    mean, half = cell_mean_ci95(cells, domains, [0], "accuracy")
    assert math.isnan(mean[1, 0]) and mean[0, 0] == -0.25
    assert all_metrics(a)["A_all"] is None  # a metric over an undefined cell is undefined, not a crash
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a classification score below 0 is still a bug
        build_matrix([{**cells[3], "accuracy": -0.1}], domains, 2, "accuracy")


# ----------------------------------------------------------------------------- config checks


def test_negative_seeds_are_refused():
    with pytest.raises(InputError, match="seed: -1 is out of range"):
        load_config([DEFAULT], ["seed=-1"])
    with pytest.raises(InputError, match="finetune.seeds: seeds must be >= 0"):
        load_config([DEFAULT], ["finetune.seeds=[0, -2]"])


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "-dash", "sp ace", "x\\y"])
def test_unsafe_domain_names_are_refused(name):
    with pytest.raises(InputError, match=r"domains\[0\].name: .* is not a valid domain name"):
        load_config([DEFAULT], [f"domains=[{{name: '{name}', path: data/laptop}}]"])


def test_sweep_metric_must_be_a_known_metric():
    with pytest.raises(InputError, match="sweep.metric: 'A_al' is not one of .*did you mean 'A_all'"):
        load_config([DEFAULT], ["sweep.metric=A_al"])
    with pytest.raises(InputError, match="sweep.score: 'f1' is not one of accuracy, macro_f1"):
        load_config([DEFAULT], ["sweep.score=f1"])
    assert load_config([DEFAULT], ["sweep.metric=BWT"]).sweep.metric == "BWT"


def test_method_name_is_derived_from_the_switches_and_a_wrong_one_refused():
    assert load_config([DEFAULT]).methods.name == "ncl"
    assert load_config([DEFAULT], ["finetune.coca.enabled=true"]).methods.name == "coca"
    assert load_config([DEFAULT], ["methods.hprompt.enabled=true", "finetune.coca.enabled=true"]).methods.name \
        == "hprompt+coca"
    for preset in sorted((REPO_ROOT / "pipelines/configs/methods").glob("*.yaml")):
        cfg = load_config([DEFAULT, preset])
        assert cfg.methods.name == method_name(cfg)
        assert preset.stem == cfg.methods.name or preset.stem.startswith(cfg.methods.name + "_")  # an ablation
    with pytest.raises(InputError, match="methods.name: 'hprompt' does not match the method switches, which make 'ncl'"):
        load_config([DEFAULT], ["methods.name=hprompt"])


def test_one_document_corpus_is_refused_by_the_dry_run(tmp_path, capsys, domain):  # noqa: F811
    (domain / "corpus.parquet").unlink()
    (domain / "corpus.txt").write_text("the only document\n\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "has one document; at least 2")


# ----------------------------------------------------------------------------- secrets and stored paths


def test_redact_hides_uri_credentials_only():
    assert redact("s3://AKIA:se/cret@bucket/p") == "s3://***@bucket/p"
    assert redact("x s3://b/p?region=eu&secret_key=abc&session_token=t y") == "x s3://b/p?region=eu&secret_key=***&session_token=*** y"
    assert redact("gs://bucket/a@v2/file.parquet /home/u/data") == "gs://bucket/a@v2/file.parquet /home/u/data"


def test_stored_config_has_no_secrets_and_project_relative_inputs(tmp_path, capsys, domain):  # noqa: F811
    secret = "s3://AKIAKEY:topsecret@bucket/runs?secret_key=xyz"
    cfg = load_config([DEFAULT], [f"ray.results_uri={secret}", f"ray.storage_path={secret}"])
    text = dump_yaml(cfg)
    assert "topsecret" not in text and "xyz" not in text and "AKIAKEY" not in text
    stored = stored_dict(cfg)
    assert stored["domains"][0]["path"] == "data/restaurant"          # inside the project: relative
    assert stored["data"]["cache_dir"] == cfg.data.cache_dir            # an output: stays absolute
    outside = load_config([config_for(tmp_path, domain)])
    assert stored_dict(outside)["domains"][0]["path"] == str(domain)
    code, out, err = run_cli(["--config", str(DEFAULT), "--set", f"ray.results_uri={secret}", "--print-config"], capsys)
    assert code == 0 and "topsecret" not in out + err and "s3://***@bucket/runs?secret_key=***" in out


def test_error_lines_are_redacted(tmp_path, capsys, domain):  # noqa: F811
    cfg = config_for(tmp_path, domain, "ray: {results_uri: 'nosuch://user:hunter2@host/x'}\n")
    code, out, err = run_cli(["--config", str(cfg), "--dry-run"], capsys)
    assert code == 2 and "hunter2" not in out + err and "nosuch://***@host/x" in err


# ----------------------------------------------------------------------------- one writer per directory


def _holder(directory):
    """A separate process holding the run-directory lock until killed."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from components.lock import hold; "
            f"hold(Path({str(directory)!r})); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_pipeline_on_a_locked_run_dir_exits_2_naming_lock_and_pid(tmp_path, capsys):
    from components.lock import release

    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        code, out, err = run_cli(["--config", str(DEFAULT), "--run-dir", str(run_dir)], capsys)
        assert code == 2 and "plan:" not in out
        assert f"lock {run_dir / '.lock'} is held by pid {proc.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()
    from components.lock import hold

    assert (run_dir / ".lock").read_text().startswith(f"pid {proc.pid}")   # stale: its holder is dead
    hold(run_dir)                                                           # ... and taken over
    assert (run_dir / ".lock").read_text().startswith(f"pid {__import__('os').getpid()} ")
    release(run_dir)


def test_unwritable_run_dir_is_one_line_before_any_work(tmp_path, capsys):
    run_dir = "/sys/anytime-cpt-run" if __import__("os").geteuid() == 0 else str(tmp_path / "ro" / "run")
    if not run_dir.startswith("/sys"):
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    code, out, err = run_cli(["--config", str(DEFAULT), "--run-dir", run_dir], capsys)
    assert code == 2 and f"run directory {run_dir} cannot be written" in err and "plan:" not in out


def test_cache_entry_lock_makes_a_second_creator_wait(tmp_path):
    import threading
    import time

    from components.lock import locked

    order = []
    lock = tmp_path / "base_models" / ".key.lock"
    with locked(lock, "cache entry"):
        with pytest.raises(InputError, match=r"cache entry .* is in use: lock .* is held by pid"):
            with locked(lock, "cache entry", wait=False):
                pass
        def second():
            with locked(lock, "cache entry"):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


# ----------------------------------------------------------------------------- torn JSONL lines


def test_jsonl_tolerates_a_torn_last_line_and_appends_after_it(tmp_path):
    from components.io import append_jsonl, read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 2, "loss": float("nan")})
    assert path.read_text() == '{"step": 1}\n{"step": 2, "loss": null}\n'
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_replayed_steps_are_not_appended_twice(tmp_path):
    from components.io import read_jsonl
    from components.run.ray_stage import MetricsCallback

    path = tmp_path / "pretrain_stage01.jsonl"

    def report(cb, step):
        cb.after_report(None, [{"step": step, "total_steps": 4, "loss": 1.0, "tokens_per_s": 1.0}], None)

    first = MetricsCallback(str(path))
    for step in (1, 2, 3, 2, 3):       # a Train restart from the step-1 checkpoint replays 2 and 3
        report(first, step)
    with open(path, "a") as f:
        f.write('{"step": 4, "tot')      # the driver died mid-line
    again = MetricsCallback(str(path))   # the next invocation resumes from step 2
    for step in (3, 4):
        report(again, step)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- sweep --dry-run


def test_sweep_dry_run_validates_everything_and_runs_nothing(tmp_path, capsys):
    from components.cli import run_main
    from pipelines.sweep import main

    argv = ["--config", str(DEFAULT), "--space", str(REPO_ROOT / "tune_spaces/coca_repcali.yaml"),
            "--run-dir", str(tmp_path / "sweep"), "--dry-run"]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(argv))
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    assert "sweep: 4 sample(s), search random" in out and "finetune.coca.alpha" in out and "plan:" in out
    assert "dry run" in out and not (tmp_path / "sweep").exists()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main([*argv, "--set", "sweep.metric=A_sen"]))
    assert e.value.code == 2 and "did you mean 'A_seen'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the run loop


def test_lengths_plus_prompt_must_fit_the_model_positions(tmp_path, capsys, domain):  # noqa: F811
    cfg = config_for(tmp_path, domain, "methods: {hprompt: {enabled: true, prompt_length: 16}}\n"
                                       "finetune: {max_length: 500}\nmodel: {block_size: 64}\n")
    expect_error(tmp_path, capsys, cfg, "16 prompt slots + finetune.max_length 500 = 516 positions")


def test_fewer_train_blocks_than_workers_is_refused():
    from components.run.plan import check_blocks

    cfg = load_config([DEFAULT], ["pretrain.num_workers=4"])
    check_blocks(cfg, "acl", 4, 1)
    with pytest.raises(InputError, match="domain 'acl': 3 training block.* pretrain.num_workers 4"):
        check_blocks(cfg, "acl", 3, 1)
    with pytest.raises(InputError, match="domain 'acl': no held-out block"):
        check_blocks(cfg, "acl", 10, 0)


def test_impossible_resource_requests_are_refused():
    from components.run.resources import check_resources, placeable

    node = {"CPU": 2.0, "memory": 1e9}
    assert placeable([node], {"CPU": 0.66}) == 3 and placeable([node, node], {"CPU": 2.0}) == 2
    check_resources(load_config([DEFAULT]), [node])                  # the default config fits 2 CPUs
    gpu = load_config([DEFAULT], ["pretrain.use_gpu=true"])
    with pytest.raises(InputError, match=r"pre-training .* needs 1 x \{CPU 2, GPU 1\}.*\(CPU 2\) hold only 0"):
        check_resources(gpu, [node])
    wide = load_config([DEFAULT], ["pretrain.num_workers=2"])         # 2 x 2 CPUs: two nodes, not one
    with pytest.raises(InputError, match="needs 2 x"):
        check_resources(wide, [node])
    check_resources(wide, [node, node])
    with pytest.raises(InputError, match="an anytime cell .* needs 1 x"):
        check_resources(load_config([DEFAULT], ["finetune.cpus_per_cell=4"]), [node, node])
    # an autoscaler: what it can scale to counts, not the nodes up now
    check_resources(gpu, [], limits={"CPU": 16, "GPU": 1})
    with pytest.raises(InputError, match="autoscaler can provide at most GPU 0"):
        check_resources(gpu, [node], limits={"CPU": 16})


def test_impossible_request_fails_fast_on_a_live_cluster(ray_session):
    from components.run.resources import check_cluster

    check_cluster(load_config([DEFAULT], ["pretrain.cpus_per_worker=1"]))
    with pytest.raises(InputError, match="GPU"):
        check_cluster(load_config([DEFAULT], ["pretrain.use_gpu=true"]))


def test_eval_only_with_another_config_is_refused(tmp_path, capsys):
    from components.run.run_dir import RunDir, write_config_and_manifest

    run_dir = tmp_path / "run"
    write_config_and_manifest(RunDir(run_dir), load_config([DEFAULT]), {})
    (run_dir / "cells").mkdir()
    code, out, err = run_cli(["--config", str(DEFAULT), "--run-dir", str(run_dir), "--eval-only",
                              "--set", "finetune.seeds=[0, 1]"], capsys)
    assert code == 2 and "holds a run with a different config (changed: finetune.seeds)" in err
    assert not (run_dir / "anytime.json").exists()


def test_resubmission_from_a_moved_working_dir_is_the_same_run(tmp_path, monkeypatch):
    """Under `ray job submit` the project is a fresh temporary copy each time: config.yaml
    stores project inputs relative to it, so the same command on the same run dir matches."""
    import shutil

    import components.config as config
    from components.run.run_dir import RunDir, check_same_run, write_config_and_manifest

    run = RunDir(tmp_path / "run")
    for copy in ("job_a", "job_b"):
        shutil.copytree(REPO_ROOT / "data/laptop", tmp_path / copy / "data/laptop")
        monkeypatch.setattr(config, "REPO_ROOT", tmp_path / copy)
        cfg = load_config([DEFAULT], ["domains=[{name: laptop, path: data/laptop}]",   # outputs: absolute in a job
                                      f"data.cache_dir={tmp_path / 'cache'}"], base_dir=tmp_path / copy)
        assert cfg.domains[0].path == str(tmp_path / copy / "data/laptop")
        check_same_run(run, cfg)
        write_config_and_manifest(run, cfg, {})
    assert "path: data/laptop" in (run.root / "config.yaml").read_text()


def test_base_model_survives_a_kill_between_any_two_files(tmp_path, tiny_model_dir, monkeypatch):
    """A crash injected after each file operation of stage 0 (base.json, the published model):
    the next invocation finishes it (it used to find the model without base.json, for ever)."""
    from types import SimpleNamespace

    import components.run.execute as execute
    from components.models.loading import load_tokenizer
    from components.run.run_dir import RunDir

    cfg = load_config([DEFAULT], [f"model.name={tiny_model_dir}", "model.head_warmup.mode=never",
                                  f"data.cache_dir={tmp_path / 'cache'}"])
    for name in ("atomic_write_json", "publish_dir"):
        holder = SimpleNamespace(cfg=cfg, run=RunDir(tmp_path / name), plan=SimpleNamespace(tokenizer=load_tokenizer(str(tiny_model_dir))))
        real = getattr(execute, name)

        def crash_after(*args, real=real, **kwargs):
            real(*args, **kwargs)
            raise KeyboardInterrupt("killed")

        monkeypatch.setattr(execute, name, crash_after)
        with pytest.raises(KeyboardInterrupt):
            execute.Pipeline.base_stage(holder)
        monkeypatch.setattr(execute, name, real)
        execute.Pipeline.base_stage(holder)
        assert holder.run.base_info.is_file() and (holder.run.stage(0, "base") / "model.safetensors").is_file()


def test_mirror_uploads_only_the_runs_own_files(tmp_path):
    from components.run.results_mirror import ResultsMirror, uri_join

    run = tmp_path / "home"                      # --run-dir ~ : the home folder holds much else
    (run / "cells").mkdir(parents=True)
    (run / "cells/s00-a-seed0.json").write_text("{}")
    (run / "anytime.json").write_text("{}")
    (run / ".ssh").mkdir()
    (run / ".ssh/id_rsa").write_text("private")
    (run / "Documents").mkdir()
    (run / "Documents/taxes.pdf").write_text("private")
    (run / "notes.txt").write_text("private")
    dest = tmp_path / "bucket"
    assert ResultsMirror(run, dest.as_uri()).sync() == 2
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == \
        ["anytime.json", "cells/s00-a-seed0.json"]
    assert uri_join("s3://b/p/?region=eu", "trials", "t1") == "s3://b/p/trials/t1?region=eu"


def test_sweep_trials_mirror_to_their_own_prefix(monkeypatch):
    from types import SimpleNamespace

    import components.run.execute as execute
    import components.run.plan as plan
    from components.config import to_dict
    from components.sweep.trial import run_trial
    from ray import tune

    seen = []

    class FakePipeline:
        def __init__(self, cfg, run_dir, *args, **kwargs):
            seen.append((cfg.ray.results_uri, run_dir.name))

        def execute(self):
            return None

    monkeypatch.setattr(execute, "Pipeline", FakePipeline)
    monkeypatch.setattr(plan, "prepare", lambda cfg: None)
    base = to_dict(load_config([DEFAULT], ["ray.results_uri=s3://bucket/sweep?region=eu"]))
    for trial in ("t1", "t2"):
        monkeypatch.setattr(tune, "get_context", lambda trial=trial: SimpleNamespace(get_trial_id=lambda: trial))
        run_trial({}, base, "/tmp/sweep", None)
    assert seen == [("s3://bucket/sweep/trials/t1?region=eu", "t1"), ("s3://bucket/sweep/trials/t2?region=eu", "t2")]


def test_sweep_score_is_the_objectives_score():
    from types import SimpleNamespace

    from components.run.execute import Pipeline

    cells = [{"stage": i, "task": t, "seed": 0, "accuracy": 0.8, "macro_f1": 0.4 if t == "a" else None}
             for i in range(3) for t in ("a", "b")]
    rows = []
    for score, expected in (("accuracy", 0.8), ("macro_f1", None)):
        holder = SimpleNamespace(cfg=load_config([DEFAULT], [f"sweep.score={score}"]), names=["a", "b"],
                                 tracker=None, cell_records=lambda: cells, on_row=lambda s, p: rows.append(p))
        Pipeline.log_partial(holder, 2)
        assert rows[-1]["A_all"] == expected          # macro_f1: one null cell makes A_all undefined
    assert rows[-1]["row_mean"] == pytest.approx(0.4)  # the mean of the row's defined cells
