"""benchmarks/coca_predefined_head.py: the zero-shot probe of CoCa's pre-defined head."""

from __future__ import annotations

import re
import subprocess
import sys

from components.config import REPO_ROOT

REPO = REPO_ROOT
SCRIPT = REPO / "benchmarks" / "coca_predefined_head.py"


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--config", str(REPO / "pipelines/configs/default.yaml"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_probe_reports_every_task_of_a_checkpoint(tiny_model_dir):
    done = probe("--set", f"model.name={tiny_model_dir}", "--checkpoint", str(tiny_model_dir / "model.safetensors"))
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"(\w+): zero-shot acc ([\d.]+), dev majority ([\d.]+) \(n=(\d+)\); predicted (\{.*\})",
                      done.stdout)
    assert [r[0] for r in rows] == ["restaurant", "acl", "tweet"]
    for _, acc, majority, n, spread in rows:
        assert 0 <= float(acc) <= 1 and 0 < float(majority) <= 1
        assert sum(int(c) for c in re.findall(r": (\d+)", spread)) == int(n)  # every dev example predicted once


def test_missing_checkpoint_is_one_line_exit_2(tmp_path):
    done = probe("--checkpoint", str(tmp_path / "nope.safetensors"))
    assert done.returncode == 2 and "--checkpoint: no such file" in done.stderr and "Traceback" not in done.stderr


def test_unreadable_checkpoint_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    done = probe("--checkpoint", str(bad))
    assert done.returncode == 2 and "not a readable safetensors file" in done.stderr and "Traceback" not in done.stderr
