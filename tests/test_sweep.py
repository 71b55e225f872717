"""Ray Tune sweeps: space validation, a real 3-trial random sweep with ASHA (the real pipeline,
MiniLM, tiny budgets), sweep.json / best.yaml, best.yaml reruns, resume keeps finished trials."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.sweep import load_space, shares_pretraining

GOOD = ["good", "great", "lovely", "excellent", "fine", "nice"]
BAD = ["bad", "awful", "terrible", "poor", "horrible", "nasty"]


def toy_domain(root: Path) -> Path:
    """A task a fine-tuned MiniLM learns in a few steps (the polarity word decides the label),
    so a trial whose head cannot learn is the worst by construction."""
    rng = random.Random(0)
    d = root / "toy"
    d.mkdir()
    nouns = ["film", "meal", "phone", "book", "hotel", "song", "game", "chair"]
    (d / "corpus.txt").write_text("\n".join(f"the {rng.choice(nouns)} was {rng.choice(GOOD + BAD)} and "
                                            f"the {rng.choice(nouns)} was {rng.choice(GOOD + BAD)}" for _ in range(300)))
    for split, n in (("train", 48), ("dev", 24), ("test", 48)):
        rows = []
        for i in range(n):
            label = "positive" if i % 2 else "negative"
            word = rng.choice(GOOD if label == "positive" else BAD)
            rows.append(json.dumps({"text": f"the {rng.choice(nouns)} was really {word}", "label": label}))
        (d / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (d / "labels.json").write_text('["negative", "positive"]')
    return d


def sweep_config(tmp_path: Path, cache: Path):
    domain = toy_domain(tmp_path)
    return [REPO_ROOT / "pipelines/configs/default.yaml"], [
        f"domains=[{{name: toy, path: {domain}}}]", f"data.cache_dir={cache}", "model.block_size=32",
        "model.head_warmup.steps=3", "pretrain.max_steps=2", "pretrain.cpus_per_worker=1", "pretrain.batch_size=8",
        "pretrain.eval_blocks=4", "pretrain.end_stage_blocks=4", "eval.anchor_positions=40",
        "finetune.epochs=3", "finetune.batch_size=8", "finetune.max_length=24", "finetune.lr=1.0e-5",
        "sweep.reduction_factor=2", "sweep.grace_period=1", "tracking.wandb=disabled", "eval.probe_max_examples=40"]


def write_space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("finetune.coca.alpah: {uniform: [0.1, 1.0]}\n", "unknown config key; did you mean 'finetune.coca.alpha'?"),
    ("finetune.coca.alpha: {normal: [0.1, 1.0]}\n", "give one distribution of"),
    ("finetune.coca.alpha: {uniform: [1.0, 0.1]}\n", "low < high"),
    ("finetune.coca.epsilon: {loguniform: [0.0, 0.1]}\n", "loguniform needs low > 0"),
    ("finetune.coca.steps: {randint: [1, 40]}\n", "value 39 is invalid"),
    ("finetune.repcali.rank: {choice: [0, -8]}\n", "value -8 is invalid"),
    ("finetune.coca.divergence: {choice: [sym_kl, cosine]}\n", "'cosine' is not one of"),
    ("[1, 2]\n", "non-empty mapping"),
])
def test_bad_space_fails_fast(tmp_path, text, message):
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("?", r"\?").replace("[", r"\[")):
        load_space(write_space(tmp_path, text), cfg)


def test_shipped_spaces_are_valid():
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    coca = load_space(REPO_ROOT / "tune_spaces/coca_repcali.yaml", cfg)
    hp = load_space(REPO_ROOT / "tune_spaces/hprompt_uegp.yaml", cfg)
    assert shares_pretraining(coca, cfg) and not shares_pretraining(hp, cfg)
    assert coca["finetune.repcali.rank"] == ("choice", [0, 8, 32, 128])


def test_bad_space_exits_2_before_any_trial(tmp_path, capsys):
    from components.cli import run_main
    from pipelines.sweep import main

    space = write_space(tmp_path, "finetune.nope: {choice: [1]}\n")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(["--config", str(REPO_ROOT / "pipelines/configs/default.yaml"), "--space", str(space),
                               "--run-dir", str(tmp_path / "sweep")]))
    assert e.value.code == 2 and "finetune.nope: unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_random_sweep_with_asha_stops_the_worst_trial_and_writes_best(tmp_path, shared_cache, ray_session):
    from components.pipeline import Pipeline, prepare
    from components.sweep_runner import plan_sweep, run_sweep

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


@pytest.mark.parametrize("name", ["optuna", "hyperopt"])
def test_model_based_searchers_suggest_inside_the_space_reproducibly(name):
    """The real optuna / hyperopt searchers on the shipped space: every suggestion lies inside
    its distribution, and the same seed gives the same sequence."""
    from components.sweep import searcher, tune_space

    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    space = load_space(REPO_ROOT / "tune_spaces/coca_repcali.yaml", cfg)

    def suggestions(seed: int) -> list[dict]:
        algo = searcher(name, space, "A_all", "max", seed)
        assert algo.set_search_properties("A_all", "max", tune_space(space))
        out = []
        for i in range(4):
            out.append(algo.suggest(f"t{i}"))
            algo.on_trial_complete(f"t{i}", {"A_all": 0.5 + 0.1 * i, "training_iteration": 1})
        return out

    first = suggestions(0)
    for s in first:
        assert set(s) == set(space)
        for key, (kind, args) in space.items():
            if kind == "choice":
                assert s[key] in args, (key, s[key])
            else:
                assert args[0] <= s[key] <= args[1], (key, s[key])
                assert isinstance(s[key], int) == (kind == "randint"), (key, s[key])
    assert suggestions(0) == first and suggestions(1) != first


def test_grid_needs_random_search():
    from components.sweep import searcher

    with pytest.raises(InputError, match="grid distributions work with --search random only"):
        searcher("optuna", {"finetune.lr": ("grid", [1e-5, 2e-5])}, "A_all", "max")


def test_optuna_sweep_runs_the_pipeline(tmp_path, shared_cache, ray_session):
    """`--search optuna` end to end: two trials of the real pipeline, each with a suggested
    head_lr inside the space, reported after every stage."""
    from components.sweep_runner import plan_sweep, run_sweep

    files, overrides = sweep_config(tmp_path, shared_cache)
    cfg = load_config(files, overrides + ["finetune.epochs=1"])
    space = write_space(tmp_path, "finetune.head_lr: {loguniform: [1.0e-3, 3.0e-2]}\n")
    out = run_sweep(cfg, plan_sweep(cfg, space, "optuna"), tmp_path / "sweep", num_samples=2, scheduler_name="none")
    assert len(out["trials"]) == 2 and {t["status"] for t in out["trials"]} == {"finished"}
    lrs = [t["params"]["finetune.head_lr"] for t in out["trials"]]
    assert all(1.0e-3 <= lr <= 3.0e-2 for lr in lrs) and lrs[0] != lrs[1]
    assert all(t["stages_reported"] == 2 for t in out["trials"])
    assert load_config([tmp_path / "sweep/best.yaml"]).finetune.head_lr == out["best"]["params"]["finetune.head_lr"]
