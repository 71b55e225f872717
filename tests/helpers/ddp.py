"""Run a test's torch.distributed worker on 2 local CPU processes, with a deadline.

The CI timeout of 2026-12-01 was a DDP test hanging at teardown (fixed in the workers: drop the
DDP module and meet a barrier before destroying the process group); this helper makes the next
hang cost one test, with the workers' stacks printed. Spawn, not fork: by the time a DDP test
runs, the pytest process may hold Ray/gRPC threads from earlier end-to-end tests, which a
forked child would inherit mid-lock. Spawned children re-import the test module (~5 s).
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _guarded(rank: int, worker: Callable, dump_after_s: float, *args) -> None:
    """In the child: a hang prints every thread's stack to stderr and exits, instead of waiting silently."""
    faulthandler.dump_traceback_later(dump_after_s, exit=True, file=sys.stderr)
    worker(rank, *args)


def run_ddp(worker: Callable, args: tuple, nprocs: int = 2, timeout_s: float = 120.0) -> None:
    """``worker(rank, *args)`` on ``nprocs`` spawned processes; fails the test on a worker
    error (re-raised by torch) or when they have not all finished within ``timeout_s``; a worker
    still running at 3/4 of it prints its stacks first."""
    ctx = mp.start_processes(_guarded, args=(worker, 0.75 * timeout_s, *args), nprocs=nprocs, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish within {timeout_s:.0f} s")


@contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """In a worker: one thread, a gloo process group over loopback (both ranks are on this
    machine) rendezvousing at ``init_file``, destroyed on exit. Drop any DDP module and meet a
    barrier before leaving the block: the reducer must go before its process group."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield
    finally:
        dist.destroy_process_group()
