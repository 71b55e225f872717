"""Test-only fault injection, driven by environment variables read on the driver:

    ANYTIME_CPT_FAIL_AT="<stage>:<step>"            the last Ray Train worker of that stage dies
                                                    (os._exit) once, before that step
    ANYTIME_CPT_FAIL_CELL="<stage>:<task>:<seed>"   that anytime cell's process dies once
    ANYTIME_CPT_FAULT_DIR=<dir>                     where the "already failed" markers go

"Once" is recorded by a marker file, so the restarted worker / retried cell goes on.
"""

from __future__ import annotations

import os
from pathlib import Path


def _marker(name: str) -> str:
    directory = Path(os.environ.get("ANYTIME_CPT_FAULT_DIR", "/tmp"))
    return str(directory / f"anytime-cpt-fault-{name}")


def stage_fault(stage: int) -> tuple[int, str] | None:
    target = os.environ.get("ANYTIME_CPT_FAIL_AT", "")
    if not target.startswith(f"{stage}:"):
        return None
    return int(target.split(":")[1]), _marker(f"stage{target.replace(':', '-')}")


def cell_fault(stage: int, task: str, seed: int) -> str | None:
    key = f"{stage}:{task}:{seed}"
    return _marker(f"cell{key.replace(':', '-')}") if os.environ.get("ANYTIME_CPT_FAIL_CELL") == key else None
