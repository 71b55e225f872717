"""End-to-end `ray job submit` against a real local Ray head with token authentication.

One head for the module (~4 s to start, ~2 s to stop); each job costs ~5-10 s on 2 CPUs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from components.config import REPO_ROOT
from tests.helpers.ray_head import ray_cli

ROOT = REPO_ROOT

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="local_ray_head cleans up through /proc"
)


def _ray(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ray_cli(), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _job_id() -> str:
    return f"anytime-cpt-test-{uuid.uuid4().hex[:10]}"


def test_trivial_job_succeeds_with_token(ray_head):
    job = _job_id()
    # The marker is computed, so the echoed entrypoint line can't satisfy the check.
    submit = _ray(
        ["job", "submit", "--address", ray_head.address, "--submission-id", job,
         "--", "python", "-c", "print('job-' + 'ok-' + str(6 * 7))"],
        ray_head.env,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    # Status through the Python SDK (same token recipe: RAY_AUTH_MODE + RAY_AUTH_TOKEN_PATH).
    status = subprocess.run(
        [sys.executable, "-c",
         "import sys; from ray.job_submission import JobSubmissionClient; "
         "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]))",
         ray_head.address, job],
        env=ray_head.env, capture_output=True, text=True, timeout=120,
    )
    assert status.returncode == 0, status.stderr[-2000:]
    assert status.stdout.strip().splitlines()[-1] == "SUCCEEDED"

    logs = _ray(["job", "logs", job, "--address", ray_head.address], ray_head.env)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "job-ok-42" in logs.stdout.splitlines()


def test_client_without_token_is_rejected(ray_head):
    env = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    listing = _ray(["job", "list", "--address", ray_head.address], env, timeout=60)
    assert listing.returncode != 0
    assert "Authentication required" in listing.stderr


def test_runtime_env_file_and_working_dir(ray_head):
    job = _job_id()
    code = (
        "import os, ray, components; "
        "print('env', os.environ['TOKENIZERS_PARALLELISM'], os.environ['HF_HUB_OFFLINE'], "
        "os.environ['PYTHONUNBUFFERED']); "
        "print('venv_shipped', os.path.exists('.venv')); "
        "print('ray', ray.__version__)"
    )
    submit = _ray(
        ["job", "submit", "--address", ray_head.address, "--submission-id", job,
         "--working-dir", ".", "--runtime-env", "ray_runtime_env.yaml",
         "--", "python", "-c", code],
        ray_head.env,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    logs = _ray(["job", "logs", job, "--address", ray_head.address], ray_head.env)
    lines = logs.stdout.splitlines()
    assert "env false 1 1" in lines
    assert "venv_shipped False" in lines
    import ray

    assert f"ray {ray.__version__}" in lines  # the job ran this environment's Python
