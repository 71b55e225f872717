"""The budget study on a tiny run: prefix-valid checkpoints, paired gains, resume, archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.config import REPO_ROOT
from components.errors import InputError

REPO = REPO_ROOT


def _args(tiny_model_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"model.name={tiny_model_dir}", "model.stage0=head_warmup", "model.head_warmup.steps=2",
            "model.block_size=16", "data.max_corpus_docs=60", f"data.cache_dir={tmp_path / 'cache'}",
            "pretrain.batch_size=4", "finetune.epochs=1", "finetune.max_train_examples=16",
            "finetune.max_eval_examples=16", "finetune.max_test_examples=16", "eval.probe_max_examples=20",
            "finetune.max_length=24"]
    return ["--config", str(REPO / "pipelines/configs/default.yaml"), *[x for s in sets for x in ("--set", s)],
            "--domains", "restaurant:acl", "--budgets", "0,2,4", "--seeds", "0,1", "--threads", "1",
            "--out-dir", str(tmp_path / "out"), *extra]


def test_budget_study_runs_resumes_and_reports(tmp_path, tiny_model_dir, capsys):
    from benchmarks.cpt_budget import main

    assert main(_args(tiny_model_dir, tmp_path, "--archive", str(tmp_path / "archive"))) == 0
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed*/b*.json"))
    assert files == [f"restaurant/seed{s}/b{b}.json" for s in (0, 1) for b in (0, 2, 4)]
    rec = json.loads((out / "restaurant/seed1/b4.json").read_text())
    assert rec["tokens"] == 4 * 4 * 16 and set(rec["probe"]) == set(rec["finetune"]) == {"restaurant", "acl"}
    assert 0.0 <= rec["probe"]["acl"]["accuracy"] <= 1.0
    # budget 4 continued the budget-2 checkpoint (prefix-valid schedule): its held-out loss differs from budget 0
    b0 = json.loads((out / "restaurant/seed1/b0.json").read_text())
    assert rec["heldout"]["restaurant"]["mlm_loss"] != b0["heldout"]["restaurant"]["mlm_loss"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    row = next(r for r in summary["gains"] if r["budget_steps"] == 4)
    gains = [json.loads((out / f"restaurant/seed{s}/b4.json").read_text())["finetune"]["acl"]["accuracy"]
             - json.loads((out / f"restaurant/seed{s}/b0.json").read_text())["finetune"]["acl"]["accuracy"]
             for s in (0, 1)]
    assert row["n_seeds"] == 2 and row["finetune_other"]["mean"] == pytest.approx(np.mean(gains))
    assert (out / "budget.png").stat().st_size > 1000 and "| restaurant (acl) | 4 |" in (out / "budget.md").read_text()
    assert sorted(p.name for p in (tmp_path / "archive/restaurant/seed0").iterdir()) == ["b0.json", "b2.json", "b4.json"]
    # a second run recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/b*.json")}
    assert main(_args(tiny_model_dir, tmp_path)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/b*.json")} == stamps


def test_probe_pooling_reads_the_study_checkpoints(tmp_path, tiny_model_dir, capsys):
    from benchmarks.cpt_budget import main as budget
    from benchmarks.probe_pooling import main as pooling

    assert budget(_args(tiny_model_dir, tmp_path)) == 0
    args = _args(tiny_model_dir, tmp_path)[:-2]
    assert pooling([*args, "--study-dir", str(tmp_path / "out"), "--out-dir", str(tmp_path / "pool")]) == 0
    for s in (0, 1):
        for b in (0, 2, 4):
            study = json.loads((tmp_path / f"out/restaurant/seed{s}/b{b}.json").read_text())["probe"]
            pool = json.loads((tmp_path / f"pool/restaurant/seed{s}/b{b}.json").read_text())["probe"]
            for task in ("restaurant", "acl"):  # [CLS] re-probed from the checkpoint = the study's own probe
                assert pool["cls"][task]["accuracy"] == pytest.approx(study[task]["accuracy"])
            assert set(pool) == {"cls", "mean"}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(r["budget_steps"], r["pooling"]) for r in summary["gains"]} == {(b, p) for b in (2, 4) for p in ("cls", "mean")}
    with pytest.raises(InputError, match="no checkpoint"):
        pooling([*args, "--budgets", "0,8", "--study-dir", str(tmp_path / "out"), "--out-dir", str(tmp_path / "p2")])


def test_budget_study_rejects_bad_arguments(tmp_path, tiny_model_dir):
    from benchmarks.cpt_budget import main

    with pytest.raises(InputError, match="must include 0"):
        main([*_args(tiny_model_dir, tmp_path)[:-2], "--budgets", "2,4", "--out-dir", str(tmp_path / "o")])
    with pytest.raises(InputError, match="not a configured domain"):
        main([*_args(tiny_model_dir, tmp_path), "--domains", "restaurant:nope"])
