"""One Ray Train `TorchTrainer` per domain stage (Train V2 API).

DDP over `num_workers` workers (gloo on CPU, NCCL on GPU), checkpoints through
`ray.train.report`, `FailureConfig(max_failures)` restarts failed workers from the last
checkpoint. The trainer's name is derived from the run and the stage, so running the same
command again resumes an interrupted stage: inside the workers `ray.train.get_checkpoint()`
then returns its latest checkpoint, which wins over the hand-off from the previous stage.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from components.io import append_jsonl, read_jsonl
from components.pretrain.loop import StageSpec, run_stage


class RaySession:
    """The `Session` of a Ray Train worker."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._restore_ctx = None

    def restore(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._restore_ctx = ckpt.as_directory()
        return Path(self._restore_ctx.__enter__())

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if checkpoint is None:
            ray.train.report(metrics)
            return
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))
        shutil.rmtree(checkpoint, ignore_errors=True)

    def wrap(self, module: nn.Module, find_unused: bool) -> nn.Module:
        if self.world_size == 1:
            return module
        return ray.train.torch.prepare_model(
            module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": find_unused}
        )

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="anytime-cpt-ckpt-"))


def _worker(config: dict) -> None:
    spec: StageSpec = config["spec"]
    if isinstance(spec, ray.ObjectRef):
        spec = ray.get(spec)
    run_stage(spec, RaySession())


class ProgressCallback(UserCallback):
    """Runs in the Train controller: appends every report to a JSONL file and prints a
    progress line (step, loss, tokens/s, ETA). A step already in the file (replayed after a
    restart from a checkpoint, in this process or an earlier one) is not appended again."""

    def __init__(self, jsonl: str, label: str):
        self.jsonl, self.label, self.t0 = jsonl, label, time.time()
        self.last_step: int | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        m = metrics[0]
        if self.last_step is None:
            self.last_step = max((r["step"] for r in read_jsonl(self.jsonl)), default=0)
        if m["step"] > self.last_step:
            append_jsonl(self.jsonl, {**m, "time": time.time()})
            self.last_step = m["step"]
        done, total = m["step"], m["total_steps"]
        rate = m["tokens_per_s"]
        eta = (time.time() - self.t0) / max(done, 1) * (total - done)
        print(f"[{self.label}] step {done}/{total} loss {m['loss']:.4f} "
              f"{rate:,.0f} tok/s ETA {eta:.0f}s", flush=True)


def train_stage(spec: StageSpec, name: str, storage_path: str, metrics_jsonl: Path) -> ray.train.Checkpoint:
    """Fit one stage on Ray Train; return its final checkpoint."""
    p = spec.config.pretrain
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": ray.put(spec)},
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker={"CPU": p.cpus_per_worker,
                                                                                 **({"GPU": 1} if p.use_gpu else {})}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.num_to_keep),
            callbacks=[ProgressCallback(str(metrics_jsonl), f"stage {spec.stage.index} {spec.stage.domain}")],
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {spec.stage.index} ({spec.stage.domain}) finished without a checkpoint")
    return result.checkpoint


