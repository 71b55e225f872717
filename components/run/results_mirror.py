"""A copy of the run directory on object storage (`ray.results_uri`: s3://, gs://, hdfs://, file://).

The run directory stays the source of truth (atomic local writes, resume); after every stage,
every anytime row and at the end the pipeline calls `sync()`, which uploads through `pyarrow.fs`
each file of the run's own layout (`RunDir.own_files`: never anything else under `--run-dir`)
that is new or changed since its last upload (size and mtime, remembered in
`<run-dir>/.mirror.json`, so a resumed run does not upload finished stages again). Hidden
files (temp files of atomic writes, the state file) and Ray's own checkpoint storage are left
out; `ray.storage_path` puts Ray Train checkpoints on object storage directly. A sweep trial
mirrors to `<results_uri>/trials/<trial id>` (`uri_join`), so trials never share a prefix.
"""

from __future__ import annotations

from pathlib import Path

from components.data.remote import copy_stream, filesystem
from components.errors import InputError
from components.io import atomic_write_json, read_json
from components.run.run_dir import RunDir

STATE = ".mirror.json"


def uri_join(uri: str, *parts: str) -> str:
    """`uri` with path `parts` appended before any query string (s3://b/p?region=x -> s3://b/p/a?region=x)."""
    path, sep, query = uri.partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def open_destination(uri: str):
    """(filesystem, base path) of `uri`, created if needed; InputError when it cannot be used."""
    problem = f"ray.results_uri: {uri} cannot be written"
    fs, base = filesystem(uri, problem)
    try:
        fs.create_dir(base, recursive=True)
    except OSError as exc:
        raise InputError(f"{problem}: {str(exc).splitlines()[0]}") from None
    return fs, base.rstrip("/")


class ResultsMirror:
    def __init__(self, root: Path, uri: str):
        self.root = root
        self.uri = uri
        self.fs, self.base = open_destination(uri)
        state = root / STATE
        self.sent: dict[str, list[int]] = read_json(state) if state.is_file() else {}

    def sync(self) -> int:
        """Upload new or changed files; return how many were uploaded."""
        uploaded = 0
        for rel, path in RunDir(self.root).own_files():
            stat = path.stat()
            stamp = [stat.st_size, stat.st_mtime_ns]
            if self.sent.get(rel) == stamp:
                continue
            dest = f"{self.base}/{rel}"
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with path.open("rb") as src, self.fs.open_output_stream(dest) as out:
                copy_stream(src, out)
            self.sent[rel] = stamp
            uploaded += 1
        if uploaded:
            atomic_write_json(self.root / STATE, self.sent)
        return uploaded
