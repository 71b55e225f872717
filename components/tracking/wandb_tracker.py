"""Weights & Biases tracking from one place (the driver), one W&B run per pipeline run.

Mode: `tracking.wandb` = auto -> `WANDB_MODE` if set, else online when `WANDB_API_KEY` is
set, else offline (files under <run_dir>/wandb, `wandb sync` uploads them later).
`WANDB_MODE=disabled` or `tracking.wandb: disabled` turns tracking off. The API key is read
by wandb itself from its environment; this module never reads, logs or stores it.

Step metrics: per-step training metrics use `train/global_step`; per-stage metrics use
`stage`, so W&B plots them against the stage index.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from components.config import TrackingConfig
from components.io import atomic_write_text


def resolve_mode(cfg: TrackingConfig) -> str:
    env = os.environ.get("WANDB_MODE")
    if cfg.wandb != "auto":
        return "disabled" if env == "disabled" else cfg.wandb
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    def __init__(self, cfg: TrackingConfig, run_dir: Path, name: str, config: dict, group: str | None = None):
        self.mode = resolve_mode(cfg)
        self.run = None
        self.global_step = 0
        if self.mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=group or cfg.group, name=name, dir=str(run_dir),
            config=config, mode=self.mode, id=run_id, resume="allow",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("train/global_step")
        self.run.define_metric("train/*", step_metric="train/global_step")
        self.run.define_metric("stage")
        self.run.define_metric("stage/*", step_metric="stage")

    def log_steps(self, records: list[dict]) -> None:
        if self.run is None:
            return
        for r in records:
            self.global_step += 1
            self.run.log({"train/global_step": self.global_step,
                          **{f"train/{k}": v for k, v in r.items() if isinstance(v, (int, float))}})

    def log_stage(self, stage: int, metrics: dict) -> None:
        if self.run is not None:
            self.run.log({"stage": stage, **{f"stage/{k}": v for k, v in metrics.items() if v is not None}})

    def log_matrix(self, anytime: dict, heatmap: Path, plots: list[Path] = ()) -> None:
        """The anytime matrices as tables, the heatmap and every picture of plots/ (`plots/<name>`)."""
        if self.run is None:
            return
        import wandb

        for score in ("accuracy", "macro_f1"):
            rows = [[name, *vals] for name, vals in zip(anytime["rows"], anytime[score])]
            self.run.log({f"anytime/{score}": wandb.Table(columns=["row", *anytime["domains"]], data=rows)})
        self.run.log({"anytime/heatmap": wandb.Image(str(heatmap)),
                      **{f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in plots}})
        for score, metrics in anytime["metrics"].items():
            self.run.summary.update({f"{score}/{k}": v for k, v in metrics.items()})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
