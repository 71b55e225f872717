"""`ray job submit` end to end: the real pipeline (tiny budgets) submitted with the shipped
runtime env to a private local head with token auth, results in an absolute --run-dir; and a
relative --run-dir refused with one line, since the job runs in Ray's temporary copy of the
working dir.

One head for the module. Measured on 2 shared, busy CPUs: head ~5-12 s, refused job ~3-7 s,
pipeline job ~100-170 s (1 DDP worker, 2 domains); the whole module ~2-3.5 min.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from components.config import REPO_ROOT
from tests.helpers.pipeline import TINY
from tests.helpers.ray_head import ray_cli

ROOT = REPO_ROOT
JOB_TIMEOUT_S = 480
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="local_ray_head cleans up through /proc"
)


@pytest.fixture(scope="module")
def client(ray_head):
    from ray.job_submission import JobSubmissionClient

    token = Path(ray_head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    return JobSubmissionClient(ray_head.address, headers={"Authorization": f"Bearer {token}"})


def submit(ray_head, run_dir: str, extra: list[str]) -> str:
    """`ray job submit` of the documented command; returns the submission id (no waiting)."""
    job = f"anytime-cpt-test-{uuid.uuid4().hex[:10]}"
    overrides = [a for item in [*TINY, *extra] for a in ("--set", item)]
    done = subprocess.run(
        [ray_cli(), "job", "submit", "--address", ray_head.address, "--submission-id", job, "--no-wait",
         "--working-dir", str(ROOT), "--runtime-env", "ray_runtime_env.yaml",
         "--", "python", "pipelines/continual.py", "--config", "pipelines/configs/default.yaml",
         "--run-dir", run_dir, *overrides],
        env=ray_head.env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return job


def wait(client, job: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job)).split(".")[-1]) not in TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job {job} still {status} after {timeout_s:.0f} s; log tail:\n"
                        + client.get_job_logs(job)[-6000:])
        time.sleep(2)
    return status


def test_pipeline_job_writes_to_the_absolute_run_dir(ray_head, client, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    job = submit(ray_head, str(run_dir), [f"data.cache_dir={cache}", "pretrain.num_workers=1",
                                          "tracking.wandb=disabled"])
    status = wait(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", f"job {job} {status}; log tail:\n{logs[-6000:]}"
    assert "metrics (accuracy): A_all" in logs

    for name in ("anytime.json", "report.md", "config.yaml", "stages/02-acl/model.safetensors"):
        assert (run_dir / name).stat().st_size > 0, name
    assert len(list((run_dir / "cells").glob("*.json"))) == 6  # 3 rows x 2 tasks x 1 seed
    assert any((cache / "blocks").glob("*.parquet"))

    # Nothing landed in the job's working dir: Ray's unpacked copy of the repo, kept while the
    # head runs, under the head's --temp-dir (tests/ray_head.py: /tmp/rayh-*).
    pkg = Path(client.get_job_info(job).runtime_env["working_dir"].split("://", 1)[1]).stem  # _ray_pkg_<hash>
    work_dirs = list(Path("/tmp").glob(f"rayh-*/session_*/runtime_resources/working_dir_files/{pkg}"))
    assert work_dirs and all((w / "pipelines/continual.py").is_file() for w in work_dirs), pkg
    for w in work_dirs:
        assert not (w / ".cache").exists() and not (w / "runs").exists(), w
        for pattern in ("anytime.json", "report.md", "*.safetensors", "s0*-seed0.json", "ray_storage", "blocks"):
            written = [p for p in w.rglob(pattern)  # archived runs and the stage-0 weights ship in git
                       if p.relative_to(w).parts[:2] not in (("benchmarks", "results"), ("data", "stage0"))]
            assert not written, (w, pattern, written)


def test_relative_run_dir_is_refused_in_one_line(ray_head, client, tmp_path):
    job = submit(ray_head, "runs/job-relative", [f"data.cache_dir={tmp_path / 'cache'}"])
    assert wait(client, job, timeout_s=180) == "FAILED"
    logs = client.get_job_logs(job)
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in logs, logs[-3000:]
    assert errors[0].startswith("error: --run-dir 'runs/job-relative' is relative, but Ray job")
    assert "pass an absolute path" in errors[0] and "/runtime_resources/working_dir_files/_ray_pkg_" in errors[0]
    assert "exit code 2" in str(client.get_job_info(job).message)
