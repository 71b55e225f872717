"""Ray Tune sweeps over config keys, with the anytime metrics as the objective.

A search space is a YAML mapping from dotted config keys to distributions:

    finetune.coca.alpha:   {loguniform: [0.1, 10.0]}
    finetune.coca.steps:   {randint: [1, 4]}            # upper bound exclusive
    finetune.repcali.rank: {choice: [0, 8, 32, 128]}
    finetune.coca.epsilon: {uniform: [1.0e-4, 1.0e-2]}
    finetune.repcali.lam:  {grid: [0.5, 1.0]}           # every value, with the random search only

Every key and bound is checked against the config schema before any trial starts.

A trial is a function (Ray 2.60's Train/Tune pattern) that runs the whole pipeline with its
config: its own TorchTrainers for the stages and Ray tasks for the cells. It reports after
every anytime row, so ASHA can stop a bad trial before the later stages; the reported
`objective` is the config's `sweep.metric` on the partial matrix (A_all / A_seen / A_unseen
over the rows so far), the mean of the latest row where that is undefined, and the full-matrix
metric at the last row. Trials hold no resources themselves (their stages and cells request
their own), so `sweep.max_concurrent_trials` bounds the parallelism.

When the space touches only `finetune.*` keys (and distillation is off: its experts come from
fine-tuning), every trial shares one set of pre-training stages, trained once up front under
`<run_dir>/pretrain-<key>`, where key hashes the config without its fine-tuning part.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from components.config import Config, config_from_dict, dump_yaml, leaf_keys, set_dotted, to_dict
from components.errors import InputError
from components.results_mirror import uri_join

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
SEARCHERS = ("random", "optuna", "hyperopt")
OBJECTIVE = "objective"


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


def shares_pretraining(space: dict, cfg: Config) -> bool:
    return all(k.startswith("finetune.") for k in space) and cfg.methods.distill.mode == "none"


def pretrain_key(cfg: Config) -> str:
    """Hash of the config without the parts that do not change pre-training."""
    d = to_dict(cfg)
    for k in ("finetune", "eval", "tracking", "sweep", "name", "ray"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def objective(metric: str, part: dict) -> float:
    """`metric` of the partial matrix, else the latest row's mean, else NaN (every cell null)."""
    value = part.get(metric)
    value = value if value is not None else part["row_mean"]
    return float("nan") if value is None else float(value)


def trial_config(base: dict, params: dict) -> Config:
    """The base config with a trial's values; methods.name is derived again from the switches."""
    d = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(d, key, value)
    d["methods"]["name"] = None
    return config_from_dict(d)


def run_trial(params: dict, base: dict, sweep_dir: str, shared_stages: str | None) -> None:
    """The Tune function trainable: the pipeline with the trial's config, reporting per row."""
    from ray import tune

    from components.pipeline import Pipeline, prepare

    cfg = trial_config(base, params)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(sweep_dir) / "trials" / trial_id
    if cfg.ray.results_uri:  # each trial its own prefix: trials never overwrite each other's copy
        cfg.ray.results_uri = uri_join(cfg.ray.results_uri, "trials", trial_id)
    metric = cfg.sweep.metric

    def on_row(stage: int, part: dict) -> None:
        clean = {k: v for k, v in part.items() if v is not None}
        tune.report({"stage": stage, OBJECTIVE: objective(metric, part), **clean})

    Pipeline(cfg, trial_dir, prepare(cfg), Path(shared_stages) if shared_stages else None, on_row=on_row).execute()


def write_outputs(sweep_dir: Path, base: dict, results, metric_mode: str) -> dict:
    """sweep.json (every trial) and best.yaml (a config `continual.py --config` accepts)."""
    from components.io import atomic_write_json, atomic_write_text

    trials = []
    for r in results:
        params = {k[len("config/"):]: v for k, v in (r.metrics or {}).items() if k.startswith("config/")}
        params = params or dict(r.config or {})
        finished = r.error is None and (r.metrics or {}).get("stage") == len(base["domains"])
        trials.append({
            "trial_id": (r.metrics or {}).get("trial_id"), "params": dict(r.config or {}),
            "status": "error" if r.error else ("finished" if finished else "stopped early"),
            "stages_reported": (r.metrics or {}).get("training_iteration"),
            "metrics": {k: v for k, v in (r.metrics or {}).items()
                        if k in (OBJECTIVE, "stage", "row_mean", "A_all", "A_seen", "A_unseen", "A_final",
                                 "learning_accuracy", "BWT", "FWT", "forgetting")},
        })
    trials.sort(key=lambda t: str(t["trial_id"]))
    done = [t for t in trials if t["status"] == "finished"]  # ties go to the first trial id
    if not done:
        raise RuntimeError(f"{sweep_dir}: no trial finished; see the trial errors in sweep.json")
    pick = max if metric_mode == "max" else min
    best = pick(done, key=lambda t: t["metrics"][OBJECTIVE])
    out = {"best": best, "trials": trials}
    atomic_write_json(sweep_dir / "sweep.json", out)
    atomic_write_text(sweep_dir / "best.yaml", dump_yaml(trial_config(base, best["params"])))
    return out
