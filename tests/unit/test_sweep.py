"""Ray Tune sweeps without Ray: space validation, searchers, fail-fast exits (tests/e2e/test_sweep_runs.py
runs real sweeps)."""

from __future__ import annotations

import pytest

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.sweep.space import load_space
from components.sweep.trial import shares_pretraining
from tests.helpers.sweep import write_space


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


@pytest.mark.parametrize("name", ["optuna", "hyperopt"])
def test_model_based_searchers_suggest_inside_the_space_reproducibly(name):
    """The real optuna / hyperopt searchers on the shipped space: every suggestion lies inside
    its distribution, and the same seed gives the same sequence."""
    from components.sweep.space import searcher, tune_space

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
    from components.sweep.space import searcher

    with pytest.raises(InputError, match="grid distributions work with --search random only"):
        searcher("optuna", {"finetune.lr": ("grid", [1e-5, 2e-5])}, "A_all", "max")
