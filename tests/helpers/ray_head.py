"""Test helper: a real, private Ray head on this machine, with token authentication.

``local_ray_head(tmp_path)`` starts ``ray start --head --block`` on 127.0.0.1 with its own
temp dir, free ports and its own token, waits until the job API answers, yields
``LocalRayHead(address, env)`` and, on exit, stops exactly the processes it started.

How a job client authenticates (Ray 2.60):

* The client (``ray job submit``, ``JobSubmissionClient``) sends the token only when
  ``RAY_AUTH_MODE=token`` is set in its environment; it then reads the token from, in
  order, ``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file holding
  it), ``~/.ray/auth_token``. Without ``RAY_AUTH_MODE=token`` the request gets HTTP 401.
* ``ray start --head`` enables token auth when ``RAY_AUTH_MODE=token`` is set (the token
  must then already exist: it is not generated) or, with the mode unset, when a token is
  found in those places (e.g. a ``~/.ray/auth_token`` left by an earlier ``ray.init()``,
  which does generate one). This helper never touches ``~/.ray``: it writes a fresh token
  to ``tmp_path/ray_auth_token`` (mode 0600) and gives head and client
  ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``. The token is never printed or logged.
  (``ray.init()`` without an address is different: it turns token auth on by default and
  writes ``~/.ray/auth_token`` if missing.)

Job entrypoints run ``python`` from the head's ``PATH`` (Ray does not change it): the head
is started with this interpreter's ``bin/`` first on ``PATH``, as if the venv were active.

Stopping: ``ray stop`` kills every Ray process of the machine (by name), including heads
that are not ours, so it is not used. The head runs in a new session (``setsid``); Ray's
own processes (GCS, raylet, dashboard, agents, workers, job drivers) stay in it. On exit
the helper sends SIGTERM to ``ray start --block`` (which shuts its node down) and then
kills whatever is left in that session only. Linux only (reads ``/proc``).

Typical cost on 2 CPUs: head ready ~4 s, trivial job ~7-11 s, stop ~1-3 s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple

# Variables that would point a client or the head at another cluster or another token.
_SCRUBBED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
             "RAY_AUTH_MODE")


class LocalRayHead(NamedTuple):
    address: str  # dashboard / job API, e.g. "http://127.0.0.1:52345"
    env: dict[str, str]  # full environment for a client subprocess (auth + address set)


def ray_cli() -> str:
    """The `ray` executable of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed next to this Python")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_token(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())  # same format as `ray get-auth-token`
    finally:
        os.close(fd)


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _kill_session(sid: int, grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = _session_members(sid)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _session_members(sid):
            time.sleep(0.1)


def _http_status(url: str, token_path: Path) -> int | None:
    """HTTP status of an authenticated GET (the token stays inside this call)."""
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Bearer " + token_path.read_text().strip())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


@contextlib.contextmanager
def local_ray_head(
    tmp_path: Path, *, num_cpus: int = 2, start_timeout_s: float = 90.0
) -> Iterator[LocalRayHead]:
    """Start a private Ray head (token auth on, dashboard on), yield its address and the
    environment a job client needs, and stop it (only its own processes) on exit."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError("local_ray_head needs Linux (/proc) to clean up its processes")
    tmp_path = Path(tmp_path)
    token_path = tmp_path / "ray_auth_token"
    _write_token(token_path)
    # Ray puts unix sockets under --temp-dir; keep it short (AF_UNIX paths max 107 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    log_path = tmp_path / "ray_head.log"

    base_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    # Job entrypoints (`python ...`) resolve `python` on the head's PATH: put this
    # environment's bin/ first, as `source .venv/bin/activate` before `ray start` would.
    bin_dir = str(Path(sys.executable).parent)
    base_env["PATH"] = os.pathsep.join([bin_dir, base_env.get("PATH", "")])
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    head_env = {
        **base_env,
        **auth,
        "RAY_USAGE_STATS_ENABLED": "0",
        # SIGTERM on `ray start --block` shuts down at once instead of draining up to 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    dashboard_port = _free_port()
    address = f"http://127.0.0.1:{dashboard_port}"
    cmd = [
        ray_cli(), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={ray_tmp}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--port={_free_port()}",
        "--include-dashboard=true",  # Tune needs the state API; the job API lives there
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--disable-usage-stats",
    ]
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"`ray start --head` exited with {proc.returncode}; log {log_path}:\n"
                    + _log_tail(log_path)
                )
            if (_http_status(f"{address}/api/version", token_path) == 200
                    and _http_status(f"{address}/api/jobs/", token_path) == 200):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Ray head not ready after {start_timeout_s:.0f} s; log {log_path}:\n"
                    + _log_tail(log_path)
                )
            time.sleep(0.25)
        client_env = {**base_env, **auth, "RAY_API_SERVER_ADDRESS": address}
        yield LocalRayHead(address, client_env)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _kill_session(proc.pid)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
