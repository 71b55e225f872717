"""One Ray Train `TorchTrainer` per domain stage (Train V2 API).

DDP over `num_workers` workers (gloo on CPU, NCCL on GPU), checkpoints through
`ray.train.report`, `FailureConfig(max_failures)` restarts failed workers from the last
checkpoint. The trainer's name is derived from the run and the stage, so running the same
command again resumes an interrupted stage: inside the workers `ray.train.get_checkpoint()`
then returns its latest checkpoint, which wins over the hand-off from the previous stage.

Logs: Ray Train's own per-report and per-checkpoint INFO lines are off unless `ray.log_level`
is INFO or DEBUG (`--verbose`). The controller only appends each report to the stage's JSONL;
the driver follows that file and prints the progress lines (components/progress.py), so they
carry no Ray prefix and print once.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from components.io import append_jsonl, read_jsonl
from components.methods.registry import build_pretrain_plugins
from components.pretrain.loop import StageSpec, run_stage
from components.progress import Progress


class RaySession:
    """The `Session` of a Ray Train worker."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._restore_ctx = None
        self.report_s = 0.0  # seconds spent in ray.train.report so far (each report carries the total before it)

    def restore(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._restore_ctx = ckpt.as_directory()
        return Path(self._restore_ctx.__enter__())

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        t = time.perf_counter()
        metrics = {**metrics, "report_s": self.report_s}
        if checkpoint is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))
            shutil.rmtree(checkpoint, ignore_errors=True)
        self.report_s += time.perf_counter() - t

    def wrap(self, module: nn.Module, find_unused: bool) -> nn.Module:
        if self.world_size == 1:
            return module
        return ray.train.torch.prepare_model(
            module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": find_unused}
        )

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="anytime-cpt-ckpt-"))


def quiet_report_lines(level: str) -> None:
    """Ray 2.60 logs "Reporting training result N: TrainingReport(...)" through a logger named by
    its file path (`logging.getLogger(__file__)` in ray/train/v2/_internal/execution/context.py),
    which escapes the `ray.train` level filter of `LoggingConfig`; give that logger `level` too."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(level)


def _worker(config: dict) -> None:
    spec: StageSpec = config["spec"]
    if isinstance(spec, ray.ObjectRef):
        spec = ray.get(spec)
    quiet_report_lines(spec.config.ray.log_level)
    run_stage(spec, RaySession(), build_pretrain_plugins)


class MetricsCallback(UserCallback):
    """Runs in the Train controller: appends every report to the stage's JSONL file. A step
    already in the file (replayed after a restart from a checkpoint, in this process or an
    earlier one) is not appended again."""

    def __init__(self, jsonl: str):
        self.jsonl = jsonl
        self.last_step: int | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        m = metrics[0]
        if self.last_step is None:
            self.last_step = max((r["step"] for r in read_jsonl(self.jsonl)), default=0)
        if m["step"] > self.last_step:
            append_jsonl(self.jsonl, {**m, "time": time.time()})
            self.last_step = m["step"]


class StageProgress(threading.Thread):
    """Driver thread: follows the stage's JSONL from its current end and prints progress:

        stage 1 (laptop): step 40/100, loss 2.314, 870 tok/s, ETA 1m12s

    The first report says whether the stage resumed; the ETA counts only steps run since
    (`resumed_from`, the checkpoint's step)."""

    def __init__(self, jsonl: Path, label: str, poll_s: float = 0.5):
        super().__init__(daemon=True)
        self.jsonl, self.label, self.poll_s = jsonl, label, poll_s
        # From the end of the last whole line: a torn one (a killed writer) is cut by the next append.
        self.offset = jsonl.read_bytes().rfind(b"\n") + 1 if jsonl.is_file() else 0
        self.stop = threading.Event()
        self.progress: Progress | None = None

    def show(self, m: dict) -> None:
        if self.progress is None:
            start = int(m.get("resumed_from", 0))
            print(f"{self.label}: " + (f"resuming the interrupted stage from its checkpoint at step {start}" if start
                  else "starting from the previous stage's weights with a fresh optimizer and schedule")
                  + f" ({m['total_steps']} steps)", flush=True)
            self.progress = Progress(self.label, m["total_steps"], "steps", start=start, every_s=0.0)
        self.progress.update(m["step"], f"loss {m['loss']:.4f}, {m['tokens_per_s']:,.0f} tok/s", elapsed=m["elapsed_s"])

    def drain(self) -> None:
        if not self.jsonl.is_file():
            return
        with open(self.jsonl) as f:
            f.seek(self.offset)
            chunk = f.read()
        lines = chunk.split("\n")
        complete, rest = lines[:-1], lines[-1]   # a line still being written waits for the next poll
        self.offset += len(chunk.encode()) - len(rest.encode())
        for line in complete:
            if line.strip():
                self.show(json.loads(line))

    def run(self) -> None:
        while not self.stop.wait(self.poll_s):
            self.drain()

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.drain()
        if self.progress is not None:
            self.progress.close()


def train_stage(spec: StageSpec, name: str, storage_path: str, metrics_jsonl: Path) -> ray.train.Checkpoint:
    """Fit one stage on Ray Train, printing its progress; return its final checkpoint."""
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
            callbacks=[MetricsCallback(str(metrics_jsonl))],
            logging_config=LoggingConfig(log_level=spec.config.ray.log_level),
        ),
    )
    follower = StageProgress(metrics_jsonl, f"stage {spec.stage.index} ({spec.stage.domain})")
    follower.start()
    try:
        result = trainer.fit()
    finally:
        follower.finish()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {spec.stage.index} ({spec.stage.domain}) finished without a checkpoint")
    return result.checkpoint


