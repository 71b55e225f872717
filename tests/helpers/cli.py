"""The real entry point with bad input: run it, expect one error line; a breakable copy of a domain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.cli import run_main
from components.config import REPO_ROOT
from pipelines.continual import main

LAPTOP = REPO_ROOT / "data/laptop"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture
def domain(tmp_path) -> Path:
    """A copy of the shipped laptop domain that a test may break."""
    d = tmp_path / "laptop"
    shutil.copytree(LAPTOP, d)
    return d


def config_for(tmp_path: Path, domain: Path, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"domains:\n  - {{name: laptop, path: {domain}}}\n{extra}")
    return cfg


def expect_error(tmp_path, capsys, cfg: Path, needle: str, argv: list[str] = ()) -> None:
    code, out, err = run_cli(["--config", str(cfg), "--dry-run", *argv], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and "plan:" not in out
