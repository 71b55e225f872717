"""Shared command-line plumbing: config files, overrides, one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from components.config import Config, dump_yaml, from_dict, load_config, merge, parse_override, read_yaml, set_dotted
from components.io import is_uri, redact
from components.errors import InputError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config; several are merged in order (mappings merge, lists replace)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one dotted key, e.g. --set pretrain.max_steps=20")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines too (Ray Train's per-report and checkpoint lines): "
                             "the same as --set ray.log_level=INFO")


def config_from_args(args: argparse.Namespace, fallback: Path | None = None) -> Config:
    files = args.config or ([fallback] if fallback is not None and fallback.is_file() else [])
    check_job_paths(getattr(args, "run_dir", None), files, args.overrides)
    if not files:
        raise InputError("no config given: pass --config FILE (e.g. pipelines/configs/default.yaml)")
    return load_config(files, [*args.overrides, *(["ray.log_level=INFO"] if getattr(args, "verbose", False) else [])])


def ray_job_submission_id() -> str | None:
    """The submission id when this process is the entrypoint of a `ray job submit` job, else None.

    Ray 2.60's job supervisor gives the entrypoint RAY_JOB_CONFIG_JSON_ENV_VAR (the job's
    runtime env + metadata, read by `ray.init()`); it sets neither RAY_JOB_ID (only Ray worker
    processes have that) nor RAY_JOB_SUBMISSION_ID.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw is None:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "?")


def check_job_paths(run_dir: Path | str | None, files: list, overrides: list[str]) -> None:
    """Under `ray job submit` the entrypoint runs in a temporary copy of the working dir: an
    output path given relative (--run-dir, ray.storage_path, data.cache_dir) would land there
    and be lost. Reject it, before any work. Inputs (data/...) travel with the working dir."""
    job = ray_job_submission_id()
    if job is None:
        return
    given: list[tuple[str, str | None]] = [("--run-dir", None if run_dir is None else str(run_dir))]
    if files:  # the values as written, before config.resolve_paths makes them absolute
        merged: dict = {}
        for f in files:
            merged = merge(merged, read_yaml(Path(f)))
        for item in overrides:
            set_dotted(merged, *parse_override(item))
        raw = from_dict(Config, merged, "config")
        given += [("ray.storage_path", raw.ray.storage_path), ("data.cache_dir", raw.data.cache_dir)]
    for name, value in given:
        if value is not None and not is_uri(value) and not Path(os.path.expanduser(value)).is_absolute():
            raise InputError(
                f"{name} {value!r} is relative, but Ray job {job!r} runs in a working directory Ray chose "
                f"({Path.cwd()}; a temporary copy under --working-dir) where outputs are lost: pass an absolute "
                "path (one every node shares, on a multi-node cluster), or a URI (s3://, gs://) for ray.storage_path")


def print_config(cfg: Config) -> None:
    sys.stdout.write(dump_yaml(cfg))


def run_main(main: Callable[[], int | None]) -> None:
    """Run `main`; a user error (or a full disk) becomes one line on stderr and exit code 2.

    Results already written stay intact: every file is written to a temp file and renamed."""
    try:
        code = main()
    except InputError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the device writing {e.filename or 'a file'} "
              "(finished results are intact; free space and run the same command again)", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
