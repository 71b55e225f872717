"""Corpora given as a URI (s3://, gs://, hdfs://, file://): fetched once to the data cache.

The driver copies the file through `pyarrow.fs` (S3 and GCS support ship in the pyarrow
wheels; credentials come from the usual environment / instance metadata) into
`<data.cache_dir>/remote/`, next to a stamp of the source's size and modification time. A
later run whose stamp still matches reuses the copy without reading the source again. From
the local copy on, a remote corpus is an ordinary corpus file: it is tokenized once on the
driver and its blocks reach every worker through the object store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from components.errors import InputError
from components.io import atomic_write_json, read_json, redact

CORPUS_SUFFIXES = (".parquet", ".txt")


def filesystem(uri: str, problem: str):
    """(pyarrow filesystem, path) of `uri`; InputError "<problem>: <reason>" when it is unusable."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # ArrowInvalid (bad URI) / OSError (access) with the backend's message
        raise InputError(f"{problem}: {str(exc).splitlines()[0]}") from None


def copy_stream(src, out) -> None:
    """Copy a readable stream into a writable one in 4 MiB chunks."""
    while chunk := src.read(1 << 22):
        out.write(chunk)


def _source(uri: str, what: str):
    """(filesystem, path, FileInfo) of `uri`; InputError when it cannot be reached or is no file."""
    import pyarrow.fs as pafs

    problem = f"{uri}: {what} cannot be read"
    fs, path = filesystem(uri, problem)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InputError(f"{problem}: {str(exc).splitlines()[0]}") from None
    if info.type != pafs.FileType.File:
        raise InputError(f"{uri}: {what} not found")
    return fs, path, info


def fetch(uri: str, cache_dir: Path | str, what: str = "file") -> Path:
    """The local copy of `uri` under `cache_dir/remote/`, downloaded only when the source's
    (size, mtime) differs from the copy's stamp. The copy is written to a temp file and
    renamed, so an interrupted download never leaves a partial file behind."""
    suffix = PurePosixPath(uri.split("://", 1)[1]).suffix
    if suffix not in CORPUS_SUFFIXES:
        raise InputError(f"{uri}: {what} must end in {' or '.join(CORPUS_SUFFIXES)}")
    fs, path, info = _source(uri, what)
    stamp = {"uri": redact(uri), "size": info.size, "mtime_ns": info.mtime_ns}
    folder = Path(cache_dir) / "remote"
    local = folder / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}{suffix}"
    stamp_file = local.with_name(local.name + ".json")
    if local.is_file() and stamp_file.is_file() and read_json(stamp_file) == stamp:
        return local
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-")
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            copy_stream(src, out)
        os.replace(tmp, local)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(stamp_file, stamp)
    return local
