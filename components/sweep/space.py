"""Ray Tune sweeps over config keys, with the anytime metrics as the objective.

A search space is a YAML mapping from dotted config keys to distributions:

    finetune.coca.alpha:   {loguniform: [0.1, 10.0]}
    finetune.coca.steps:   {randint: [1, 4]}            # upper bound exclusive
    finetune.repcali.rank: {choice: [0, 8, 32, 128]}
    finetune.coca.epsilon: {uniform: [1.0e-4, 1.0e-2]}
    finetune.repcali.lam:  {grid: [0.5, 1.0]}           # every value, with the random search only

Every key and bound is checked against the config schema before any trial starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from components.config import Config, config_from_dict, leaf_keys, set_dotted, to_dict
from components.errors import InputError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
SEARCHERS = ("random", "optuna", "hyperopt")


def load_space(path: Path, cfg: Config) -> dict[str, tuple[str, list]]:
    """Read and validate a space file: {dotted key: (distribution, arguments)}."""
    if not path.is_file():
        raise InputError(f"search space not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: a search space is a non-empty mapping of dotted config keys")
    keys = leaf_keys()
    space = {}
    for key, spec in raw.items():
        where = f"{path.name}: {key}"
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            raise InputError(f"{where}: unknown config key" + (f"; did you mean '{close[0]}'?" if close else ""))
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise InputError(f"{where}: give one distribution of {', '.join(DISTRIBUTIONS)}, e.g. {{choice: [1, 2]}}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise InputError(f"{where}: {kind} takes a non-empty list")
        values = _check_values(where, kind, [_number(a) for a in args])
        for v in values:  # every value the distribution can produce must be valid for the key
            try:
                trial_config(to_dict(cfg), {key: v})
            except InputError as e:
                raise InputError(f"{where}: value {v!r} is invalid ({e})") from None
        space[key] = (kind, [_number(a) for a in args])
    return space


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)  # PyYAML reads 1e-3 (no dot) as a string
        except ValueError:
            return v
    return v


def _check_values(where: str, kind: str, args: list) -> list:
    """The values to validate against the schema: the bounds of a range, or every listed value."""
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
            raise InputError(f"{where}: {kind} takes [low, high] numbers with low < high, got {args}")
        if kind == "loguniform" and args[0] <= 0:
            raise InputError(f"{where}: loguniform needs low > 0, got {args[0]}")
        if kind == "randint":
            if not all(isinstance(a, int) for a in args):
                raise InputError(f"{where}: randint takes integers, got {args}")
            return [args[0], args[1] - 1]
        return args
    return args


def tune_space(space: dict[str, tuple[str, list]]) -> dict:
    from ray import tune

    make = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
            "grid": lambda a: tune.grid_search(a)}
    return {key: make[kind](args) for key, (kind, args) in space.items()}


def searcher(name: str, space: dict, metric: str, mode: str, seed: int = 0):
    """Tune's search algorithm for `--search` (None = random sampling); model-based searchers
    are seeded with the config's seed, so a sweep's sequence of suggestions is reproducible."""
    if name == "random":
        return None  # Tune's default (random sampling + grid expansion)
    if any(kind == "grid" for kind, _ in space.values()):
        raise InputError(f"--search {name}: grid distributions work with --search random only")
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(metric=metric, mode=mode, seed=seed)
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed)
    except (ImportError, AssertionError):
        raise InputError(f"--search {name}: the '{name}' package is not installed (pip install {name})") from None


def trial_config(base: dict, params: dict) -> Config:
    """The base config with a trial's values; methods.name is derived again from the switches."""
    d = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(d, key, value)
    d["methods"]["name"] = None
    return config_from_dict(d)
