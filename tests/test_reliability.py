"""Reliability (issue #20): valid input never crashes, invalid input stops before any training
with one line and exit 2, secrets never reach a file or the terminal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.config import REPO_ROOT, dump_yaml, load_config, method_name, stored_dict
from components.data.remote import redact
from components.errors import InputError
from components.eval.matrix import build_matrix, cell_mean_ci95
from components.eval.metrics import all_metrics
from tests.test_cli_errors import config_for, domain, expect_error, run_cli  # noqa: F401  (fixture)

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
    from components.finetune.task_model import TaskModel
    from components.models.loading import masked_lm_from_state
    from components.models.masked_lm import MaskedLM
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
        assert cfg.methods.name == preset.stem == method_name(cfg)
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
    from components.pretrain.ray_stage import MetricsCallback

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
