"""A local Ray started by the pipeline keeps a row's task workers for the next row.

Ray keeps at most `num_workers_soft_limit` idle workers (default: the CPU count) and kills the
rest after about a second idle; a row runs more cell-sized tasks than there are CPUs, so without
`keep_task_workers` every row paid fresh workers' torch/transformers imports. Each case runs in
its own process, so its raylet starts with that process's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from components.config import REPO_ROOT

pytestmark = pytest.mark.e2e

SCRIPT = r"""
import json, os, sys, time
import ray
from components.config import REPO_ROOT, load_config
from components.run.tasks import init_ray

n = os.cpu_count()
per = n / (n + 1)  # n + 1 cell-sized tasks fit at once: one more than Ray's default idle pool
cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"], [f"finetune.cpus_per_cell={per}"])
if sys.argv[1] == "pipeline":
    init_ray(cfg)
else:
    ray.init(configure_logging=False)

@ray.remote
def pid(barrier, k):
    # every task of the row holds its worker until all n + 1 run (no reuse within a row,
    # however slowly workers start on a loaded machine)
    open(os.path.join(barrier, str(k)), "w").close()
    deadline = time.time() + 300
    while len(os.listdir(barrier)) < n + 1 and time.time() < deadline:
        time.sleep(0.05)
    return os.getpid()

def row(barrier):
    os.makedirs(barrier)
    return sorted(set(ray.get([pid.options(num_cpus=per).remote(barrier, k) for k in range(n + 1)])))

first = row(os.path.join(sys.argv[2], "row1"))
time.sleep(5.0)  # idle workers above the soft limit are killed after ~1 s
second = row(os.path.join(sys.argv[2], "row2"))
print(json.dumps({"first": first, "second": second, "limit": os.environ.get("RAY_num_workers_soft_limit")}))
ray.shutdown()
"""


def rows(mode: str, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    (tmp_path / mode).mkdir()
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(tmp_path / mode)], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pipeline_ray_reuses_the_previous_rows_workers(tmp_path):
    n = os.cpu_count()
    stock = rows("stock", tmp_path)
    assert len(stock["first"]) == n + 1 and stock["limit"] is None
    assert set(stock["second"]) != set(stock["first"]), "premise: Ray's default pool re-spawns workers"
    ours = rows("pipeline", tmp_path)
    assert ours["limit"] == str(n + 2)
    assert len(ours["first"]) == n + 1 and ours["second"] == ours["first"]
