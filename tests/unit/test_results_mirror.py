"""The run directory's copy on object storage (ray.results_uri), through a file:// URI: the
same pyarrow.fs code path as s3:// or gs:// (no network here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.run.results_mirror import STATE, ResultsMirror


def make_run(root: Path) -> None:
    (root / "cells").mkdir(parents=True)
    (root / "cells/s00-a-seed0.json").write_text('{"accuracy": 0.5}')
    (root / "anytime.json").write_text("{}")
    (root / "ray_storage/ckpt").mkdir(parents=True)
    (root / "ray_storage/ckpt/state.pkl").write_bytes(b"x")
    (root / ".tmp-write").write_text("partial")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sync_uploads_new_and_changed_files_only(tmp_path: Path) -> None:
    run, dest = tmp_path / "run", tmp_path / "bucket" / "prefix"
    make_run(run)
    mirror = ResultsMirror(run, dest.as_uri())
    assert mirror.sync() == 2
    assert tree(dest) == {"cells/s00-a-seed0.json": b'{"accuracy": 0.5}', "anytime.json": b"{}"}
    assert mirror.sync() == 0                                   # nothing changed
    (run / "anytime.json").write_text('{"rows": 1}')
    os.utime(run / "anytime.json", ns=(1, 1))                   # a rewrite changes (size, mtime)
    (run / "cells/s01-a-seed0.json").write_text("{}")
    assert mirror.sync() == 2
    assert tree(dest)["anytime.json"] == b'{"rows": 1}' and "cells/s01-a-seed0.json" in tree(dest)
    # a resumed run (new process) remembers what was uploaded
    (dest / "anytime.json").unlink()
    assert ResultsMirror(run, dest.as_uri()).sync() == 0 and (run / STATE).is_file()


def test_results_uri_must_be_a_usable_uri(tmp_path: Path) -> None:
    default = REPO_ROOT / "pipelines/configs/default.yaml"
    with pytest.raises(InputError, match="ray.results_uri: '/abs/path' is not a URI"):
        load_config([default], ["ray.results_uri=/abs/path"])
    with pytest.raises(InputError, match="ray.results_uri: nosuch://x cannot be written"):
        ResultsMirror(tmp_path, "nosuch://x")


def test_a_failed_copy_warns_and_is_retried(tmp_path: Path, capsys) -> None:
    """A destination that fails mid-run does not stop the pipeline: a warning, and the files
    are uploaded at the next sync."""
    from types import SimpleNamespace

    from components.run.execute import Pipeline

    run, dest = tmp_path / "run", tmp_path / "bucket"
    make_run(run)
    holder = SimpleNamespace(mirror=ResultsMirror(run, dest.as_uri()))
    dest.rmdir()
    dest.write_text("not a directory")                 # uploads now fail with OSError
    Pipeline.sync_results(holder)
    assert "warning: results copy to" in capsys.readouterr().out and not (run / STATE).exists()
    dest.unlink()
    Pipeline.sync_results(holder)
    assert "results: 2 file(s) copied" in capsys.readouterr().out
    assert tree(dest) == {"cells/s00-a-seed0.json": b'{"accuracy": 0.5}', "anytime.json": b"{}"}
