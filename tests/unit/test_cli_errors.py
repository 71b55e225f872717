"""Bad input through the real entry point: one line naming the problem, exit code 2, no
traceback, nothing trained (checked with --dry-run, which stops before any training)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.cli import run_main
from components.config import REPO_ROOT
from tests.helpers.cli import config_for, domain, expect_error, run_cli  # noqa: F401  (domain: a fixture)

def test_valid_config_dry_run_prints_the_plan(tmp_path, capsys, domain):
    code, out, err = run_cli(["--config", str(config_for(tmp_path, domain)), "--dry-run"], capsys)
    assert code == 0, err
    assert "stage 1: pre-train on laptop" in out and "anytime cells: 2 = 2 rows x 1 tasks x 1 seeds" in out
    assert "dry run" in out


def test_dry_run_with_a_corpus_uri(tmp_path, capsys, domain):
    """A corpus given as a URI is fetched into data.cache_dir and validated like a local one;
    a URI that does not exist is one line naming it."""
    uri = (domain / "corpus.parquet").as_uri()
    cfg = tmp_path / "uri.yaml"
    cfg.write_text(f"domains:\n  - {{name: laptop, path: {domain}, corpus: '{uri}'}}\n"
                   f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    code, out, err = run_cli(["--config", str(cfg), "--dry-run"], capsys)
    assert code == 0, err
    assert uri in out and len(list((tmp_path / "cache/remote").glob("*.parquet"))) == 1
    (domain / "corpus.parquet").unlink()
    expect_error(tmp_path, capsys, cfg, f"{uri}: corpus of domain 'laptop' not found")


def test_unknown_key(tmp_path, capsys, domain):
    expect_error(tmp_path, capsys, config_for(tmp_path, domain, "pretrain: {max_stepz: 3}\n"),
                 "unknown config key 'pretrain.max_stepz'; did you mean 'pretrain.max_steps'?")


def test_wrong_type_and_out_of_range(tmp_path, capsys, domain):
    cfg = config_for(tmp_path, domain)
    expect_error(tmp_path, capsys, cfg, "pretrain.batch_size: expected an integer", ["--set", "pretrain.batch_size=big"])
    expect_error(tmp_path, capsys, cfg, "finetune.lr: 0.0 is out of range", ["--set", "finetune.lr=0"])


def test_domain_directory_missing(tmp_path, capsys):
    expect_error(tmp_path, capsys, config_for(tmp_path, tmp_path / "nowhere"), "nowhere")


def test_corpus_empty(tmp_path, capsys, domain):
    (domain / "corpus.parquet").unlink()
    (domain / "corpus.txt").write_text("\n  \n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "corpus.txt")


def test_corpus_not_utf8(tmp_path, capsys, domain):
    (domain / "corpus.parquet").unlink()
    (domain / "corpus.txt").write_bytes(b"fine line\n\xff\xfe broken\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "UTF-8")


def test_jsonl_line_not_json(tmp_path, capsys, domain):
    with open(domain / "train.jsonl", "a") as f:
        f.write("{not json\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "train.jsonl:2164")


def test_jsonl_lacks_text_or_label(tmp_path, capsys, domain):
    (domain / "dev.jsonl").write_text(json.dumps({"label": "positive"}) + "\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "dev.jsonl:1")
    (domain / "dev.jsonl").write_text(json.dumps({"text": "ok"}) + "\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "label")


def test_label_not_in_labels_json(tmp_path, capsys, domain):
    (domain / "test.jsonl").write_text(json.dumps({"text": "a", "text_b": "b", "label": "ecstatic"}) + "\n")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "ecstatic")


def test_task_split_missing(tmp_path, capsys, domain):
    (domain / "dev.jsonl").unlink()
    expect_error(tmp_path, capsys, config_for(tmp_path, domain), "dev")


def test_duplicate_domain_names(tmp_path, capsys, domain):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(f"domains:\n  - {{name: x, path: {domain}}}\n  - {{name: x, path: {domain}}}\n")
    expect_error(tmp_path, capsys, cfg, "duplicate domain name 'x'")


def test_model_not_found_offline(tmp_path, capsys, domain):
    expect_error(tmp_path, capsys, config_for(tmp_path, domain, "model: {name: no-such-org/no-such-model}\n"),
                 "model 'no-such-org/no-such-model'")
    expect_error(tmp_path, capsys, config_for(tmp_path, domain, f"model: {{name: {tmp_path}}}\n"),
                 "no config.json")


def test_coca_verbalizer_clash_is_caught_before_training(tmp_path, capsys, domain):
    cfg = config_for(tmp_path, domain, "finetune: {coca: {enabled: true}}\n"
                     "domains:\n  - {name: laptop, path: %s, verbalizers: {negative: good, positive: good}}\n" % domain)
    expect_error(tmp_path, capsys, cfg, "domains[0].verbalizers")


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "pipelines/continual.py"), "--config",
                           str(REPO_ROOT / "pipelines/configs/default.yaml"), "--set", "pretrain.max_steps=-1",
                           "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: pretrain.max_steps: -1 is out of range (must be >= 1)"


def test_full_disk_is_one_line_and_exit_2(capsys):
    import errno

    def fills_the_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/cells/s01-acl-seed0.json")

    with pytest.raises(SystemExit) as e:
        run_main(fills_the_disk)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: no space left on the device writing /runs/x/cells/")
    assert "Traceback" not in err
