"""Output paths in a `ray job submit` job: relative ones are refused in one line (the job runs
in Ray's temporary copy of the working dir), absolute paths and URIs pass. In-process, no head
(tests/e2e/test_job_submit.py submits real jobs)."""

from __future__ import annotations

import re

import pytest

from components.config import REPO_ROOT

ROOT = REPO_ROOT


JOB_ENV = '{"runtime_env": {}, "metadata": {"job_submission_id": "unit", "job_name": "unit"}}'
ABS = ["--set", "data.cache_dir=/abs/cache"]


@pytest.mark.parametrize("args, culprit", [
    (["--run-dir", "runs/x", *ABS], "--run-dir 'runs/x'"),
    (["--run-dir", "/abs/run"], "data.cache_dir '.cache/anytime-cpt'"),  # the default is relative
    (["--run-dir", "/abs/run", *ABS, "--set", "ray.storage_path=ckpt"], "ray.storage_path 'ckpt'"),
])
def test_relative_output_paths_are_refused_only_in_a_job(args, culprit, monkeypatch, capsys):
    """In-process, no head: a job is recognised by RAY_JOB_CONFIG_JSON_ENV_VAR, which Ray's job
    supervisor gives the entrypoint (test_relative_run_dir_is_refused_in_one_line: a real job)."""
    from components.errors import InputError
    from pipelines import continual, sweep

    argv = ["--config", "pipelines/configs/default.yaml", "--print-config", *args]
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert continual.main(argv) == 0  # not a job: relative paths resolve against the current dir
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", JOB_ENV)
    for main, extra in ((continual.main, []), (sweep.main, ["--space", "tune_spaces/none.yaml"])):
        expected = f"^{re.escape(culprit)} is relative, but Ray job 'unit' .*pass an absolute path"
        with pytest.raises(InputError, match=expected):
            main(argv + extra)


def test_absolute_paths_uris_and_shipped_data_pass_in_a_job(monkeypatch, capsys):
    from pipelines import continual

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", JOB_ENV)
    assert continual.main(["--config", "pipelines/configs/default.yaml", "--print-config", "--run-dir", "~/runs/x",
                           *ABS, "--set", "ray.storage_path=s3://bucket/ckpt"]) == 0
    out = capsys.readouterr().out
    assert "storage_path: 's3://bucket/ckpt'" in out and "path: data/acl," in out  # stored relative to the project
