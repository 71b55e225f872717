"""One writer per directory: an exclusive `flock` on a lock file that names its holder.

A run directory is held by the pipeline writing it for the whole process (`hold`); a second
pipeline on it stops at once with one line naming the lock file and the holder's pid. A
shared cache entry is created under `locked` with `wait=True`: a second creator waits, then
finds the entry made. The kernel drops an flock when its process dies (SIGKILL included), so
a lock file left by a dead process is simply taken over; its old pid line is overwritten.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.errors import InputError

LOCK_NAME = ".lock"
_held: dict[str, int] = {}   # lock file -> fd, held until this process exits


def _acquire(path: Path, what: str, wait: bool) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"{what} {path.parent} cannot be written ({exc.strerror or exc}); "
                         "give a directory this user can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
        if not wait:
            os.close(fd)
            raise InputError(f"{what} {path.parent} is in use: lock {path} is held by {holder}; wait for it "
                             "to finish or use another directory") from None
        print(f"waiting for {what} {path.parent}: lock {path} is held by {holder}", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def hold(directory: Path, what: str = "run directory") -> Path:
    """Lock `directory` (created if needed) until this process exits; re-entrant in one process.
    InputError when another live process holds it or the directory cannot be written."""
    path = Path(directory).resolve() / LOCK_NAME
    if str(path) not in _held:
        _held[str(path)] = _acquire(path, what, wait=False)
    return path


def release(directory: Path) -> None:
    """Give up a lock taken by `hold` (tests; a process's locks otherwise end with it)."""
    fd = _held.pop(str(Path(directory).resolve() / LOCK_NAME), None)
    if fd is not None:
        os.close(fd)


@contextmanager
def locked(path: Path, what: str, wait: bool = True) -> Iterator[None]:
    """Hold lock file `path` for the block (waiting for another holder when `wait`)."""
    fd = _acquire(Path(path), what, wait)
    try:
        yield
    finally:
        os.close(fd)
