"""Drive a sweep: validate the space, pre-train the shared stages once when possible, run or
resume the Tuner, write sweep.json / best.yaml, log the results table to W&B."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from components.config import Config, to_dict
from components.errors import InputError
from components.sweep.space import load_space, searcher, tune_space
from components.sweep.trial import OBJECTIVE, pretrain_key, run_trial, shares_pretraining, write_outputs


@dataclass
class SweepPlan:
    """What validation found: the space, the search algorithm, the pipeline's plan."""

    space: dict
    search: str
    algo: object
    plan: object

    def describe(self, cfg: Config, num_samples: int, scheduler: str) -> str:
        lines = [f"sweep: {num_samples} sample(s), search {self.search}, scheduler {scheduler}, objective "
                 f"{cfg.sweep.metric} of {cfg.sweep.score} ({cfg.sweep.mode})"]
        lines += [f"  {key}: {kind} {args}" for key, (kind, args) in self.space.items()]
        return "\n".join(lines + [self.plan.describe(cfg)])


def plan_sweep(cfg: Config, space_file: Path, search: str) -> SweepPlan:
    """Validate the space, the searcher and the pipeline's inputs: before Ray or any trial starts."""
    from components.run.plan import prepare

    space = load_space(space_file, cfg)
    return SweepPlan(space, search, searcher(search, space, OBJECTIVE, cfg.sweep.mode, cfg.seed), prepare(cfg))


def run_sweep(cfg: Config, sweep_plan: SweepPlan, sweep_dir: Path, num_samples: int, scheduler_name: str) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from components.run.execute import Pipeline
    from components.run.tasks import init_ray
    from components.run.resources import check_cluster
    from components.run.results_mirror import uri_join

    space, algo, plan = sweep_plan.space, sweep_plan.algo, sweep_plan.plan
    sweep_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg)
    check_cluster(cfg)
    base = to_dict(cfg)
    base["tracking"]["group"] = cfg.tracking.group or f"sweep-{sweep_dir.name}"
    shared = None
    if shares_pretraining(space, cfg):
        shared = sweep_dir / f"pretrain-{pretrain_key(cfg)}"
        print(f"the space touches fine-tuning keys only: pre-training once in {shared}", flush=True)
        shared_cfg = copy.deepcopy(cfg)   # its own results prefix, next to the trials'
        if cfg.ray.results_uri:
            shared_cfg.ray.results_uri = uri_join(cfg.ray.results_uri, shared.name)
        Pipeline(shared_cfg, shared, plan, pretrain_only=True).execute()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, sweep_dir=str(sweep_dir), shared_stages=str(shared) if shared else None),
        {"cpu": 0, "memory": 1_000_000})  # a token bundle: the trial's stages and cells bring their own resources
    scheduler = None
    if scheduler_name == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(cfg.domains) + 1,
                                  grace_period=cfg.sweep.grace_period, reduction_factor=cfg.sweep.reduction_factor)
    experiment = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(experiment)):
        print(f"resuming the sweep in {experiment}: finished trials are kept", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(space),
            tune_config=tune.TuneConfig(metric=OBJECTIVE, mode=cfg.sweep.mode, search_alg=algo, scheduler=scheduler,
                                        num_samples=num_samples, max_concurrent_trials=cfg.sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=1),
        )
    results = tuner.fit()
    out = write_outputs(sweep_dir, base, results, cfg.sweep.mode)
    _log_table(cfg, sweep_dir, out)
    if not ray.is_initialized():
        raise InputError("Ray stopped during the sweep")
    return out


def _log_table(cfg: Config, sweep_dir: Path, out: dict) -> None:
    from components.tracking.wandb_tracker import Tracker

    tracker = Tracker(cfg.tracking, sweep_dir, f"{cfg.name}-sweep-summary", {"sweep_dir": str(sweep_dir)},
                      group=cfg.tracking.group or f"sweep-{sweep_dir.name}")
    if tracker.run is not None:
        import wandb

        keys = sorted({k for t in out["trials"] for k in t["params"]})
        rows = [[t["trial_id"], t["status"], t["metrics"].get(OBJECTIVE), *[t["params"].get(k) for k in keys]]
                for t in out["trials"]]
        tracker.run.log({"sweep/trials": wandb.Table(columns=["trial", "status", OBJECTIVE, *keys], data=rows)})
    tracker.finish()
