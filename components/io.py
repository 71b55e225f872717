"""Atomic file writes (temp file in the same directory, then ``os.replace``), JSON reads,
append-only JSONL files that survive a process killed mid-append (a torn last line), URIs
(detection, secrets redacted)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: Path | str) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temp file in the same directory, are flushed and fsynced, then the
    temp file replaces ``path``. On any error the temp file is removed and ``path`` is left
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` with numpy arrays/scalars made plain Python and NaN floats made None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON; NaN becomes null, infinities are an error."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: Path | str) -> Any:
    """Read and parse a UTF-8 JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path | str) -> list[dict]:
    """The records of a JSONL file ([] when it does not exist). Text after the last newline is
    a line cut short by a killed writer (`append_jsonl` writes each line whole, newline last)
    and is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    complete = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def append_jsonl(path: Path | str, record: dict) -> None:
    """Append one record as a line; a torn last line left by a killed writer is cut off first
    (the line is written whole, so a reader never sees two records run together)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - (1 << 20)))
            data = f.read()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n")
                f.truncate(size - len(data) + cut + 1 if cut >= 0 else size - len(data))
        f.write((json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode("utf-8"))
        f.flush()


def is_uri(text: str | None) -> bool:
    """True for `scheme://...` strings (a filesystem path never contains '://')."""
    return bool(text) and "://" in text


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@:\s'\"]*:[^@\s'\"]*|[^/@\s'\"]+)@")
_SECRET_PARAM = re.compile(r"([?&][^=&\s'\"]*(?:secret|key|token|password|passwd|credential|signature|sig)"
                           r"[^=&\s'\"]*=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the secrets of every URI in it replaced by `***`: the user-info part
    (s3://KEY:SECRET@bucket -> s3://***@bucket) and query parameters whose name says key,
    secret, token, password, credential or signature (?secret_key=X -> ?secret_key=***)."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_tree(obj):
    """`redact` applied to every string in nested dicts and lists (configs, manifests)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v) for v in obj]
    return obj
