"""One sweep trial and the sweep's outputs.

A trial is a function (Ray 2.60's Train/Tune pattern) that runs the whole pipeline with its
config: its own TorchTrainers for the stages and Ray tasks for the cells. It reports after
every anytime row, so ASHA can stop a bad trial before the later stages; the reported
`objective` is the config's `sweep.metric` on the partial matrix (A_all / A_seen / A_unseen
over the rows so far), the mean of the latest row where that is undefined, and the full-matrix
metric at the last row. Trials hold no resources themselves (their stages and cells request
their own), so `sweep.max_concurrent_trials` bounds the parallelism.

When the space touches only `finetune.*` keys (and no pre-training plug-in uses row 0's fine-tuned
models, as distillation does), every trial shares one set of pre-training stages, trained once up front under
`<run_dir>/pretrain-<key>`, where key hashes the config without its fine-tuning part.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.config import Config, dump_yaml, to_dict
from components.io import atomic_write_json, atomic_write_text
from components.methods.registry import pretraining_uses_row0_models
from components.run.results_mirror import uri_join
from components.sweep.space import trial_config

OBJECTIVE = "objective"


def shares_pretraining(space: dict, cfg: Config) -> bool:
    return all(k.startswith("finetune.") for k in space) and not pretraining_uses_row0_models(cfg)


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


def run_trial(params: dict, base: dict, sweep_dir: str, shared_stages: str | None) -> None:
    """The Tune function trainable: the pipeline with the trial's config, reporting per row."""
    from ray import tune

    from components.run.execute import Pipeline
    from components.run.plan import prepare

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
