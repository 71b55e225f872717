"""Ray's background exporters off, for the Ray instances this project starts or drives.

    RAY_USAGE_STATS_ENABLED=0        usage-stats reporting (docs.ray.io: cluster/usage-stats)
    RAY_enable_metrics_collection=0  core metrics (Ray system config `enable_metrics_collection`):
                                     nothing here scrapes Prometheus
    RAY_TRAIN_METRICS_ENABLED=0      Ray Train's controller/worker metrics callbacks (read by the
                                     driver when it builds a trainer; Prometheus only)

Nothing the project uses is lost: fault tolerance (FailureConfig), placement-group cleanup
(the dashboard stays on, its state API is what the cleaner queries), the progress line and
the per-step JSONL (our own callback). Values already in the environment win, so a cluster
with Prometheus keeps its metrics by exporting the variable. GCS and raylet read theirs at
start: they apply to a local instance started after `apply_lean_ray_env()`; on a running
cluster only the driver-side one (Train metrics) does. Measured effect: docs/results.md "Speed".

`keep_task_workers(slots)` sizes the idle worker pool of a local instance: Ray keeps at most
`num_workers_soft_limit` idle workers (default: the node's CPU count) and kills the rest after a
second idle, so a row of more tasks than CPUs (3 cells at 0.66 CPU + a probe on 2 CPUs)
re-spawned workers every row, each importing torch and transformers again (~8 CPU-seconds).
"""

from __future__ import annotations

import os

LEAN_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def apply_lean_ray_env() -> dict[str, str]:
    """Set the variables not already set; return the values now in effect."""
    for key, value in LEAN_RAY_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in LEAN_RAY_ENV}


def keep_task_workers(slots: int) -> str:
    """Let a local Ray keep `slots` idle workers between rows (RAY_num_workers_soft_limit, unless
    already set); return the value in effect. Read by the raylet at start: set it before
    `ray.init()` starts a local instance."""
    os.environ.setdefault("RAY_num_workers_soft_limit", str(max(1, slots)))
    return os.environ["RAY_num_workers_soft_limit"]
