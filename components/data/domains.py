"""Domains: where a domain's corpus and task live, a full check of every file, and readers.

Shipped layout (`DomainConfig.path`)::

    <dir>/corpus.parquet | corpus.txt   unlabeled text (parquet: a string `text` column;
                                        txt: UTF-8, one document per line)
    <dir>/train.jsonl dev.jsonl test.jsonl
                                        {"text": ..., ["text_b": ...], "label": ...} per line
    <dir>/labels.json                   ["neg", "pos", ...] or {"type": "regression"}

Explicit `corpus` / `train` / `dev` / `test` / `labels` fields override the directory's
files; `hf_dataset` replaces the corpus by a Hugging Face dataset's `text_column`. `corpus`
may be a URI (s3://, gs://, hdfs://, file://): `localize_corpus` fetches it once to the data
cache (components/data/remote.py) before anything reads it. `task` replaces the jsonl files by
a Hugging Face dataset (a `save_to_disk` folder or a hub id in the local cache) with the
split and column names it gives; ClassLabel labels become the label names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.config import DomainConfig, HfTaskConfig
from components.data.remote import fetch
from components.errors import InputError
from components.io import is_uri

SPLITS = ("train", "dev", "test")
CORPUS_FILES = ("corpus.parquet", "corpus.txt")


@dataclass(frozen=True)
class Domain:
    """A domain with every path resolved (paths may still be missing: see `validate_domain`)."""

    name: str
    directory: Path | None
    corpus: Path | None
    hf_dataset: str | None
    hf_split: str
    text_column: str
    train: Path | None
    dev: Path | None
    test: Path | None
    labels: Path | None
    verbalizers: dict[str, str] | None = field(default=None, hash=False)
    corpus_uri: str | None = None   # a remote corpus; `corpus` is its local copy once fetched
    task_source: HfTaskConfig | None = field(default=None, hash=False)   # the task from a HF dataset

    @property
    def corpus_source(self) -> str:
        """The corpus as one string: a file path, a URI or `hf:<dataset>[<split>]`."""
        if self.hf_dataset:
            return f"hf:{self.hf_dataset}[{self.hf_split}]"
        return self.corpus_uri or str(self.corpus)


@dataclass(frozen=True)
class DomainSummary:
    """What `validate_domain` found."""

    name: str
    corpus_source: str
    n_docs: int
    n_chars: int
    examples: dict[str, int]
    label_names: list[str]
    is_pair: bool
    is_regression: bool


@dataclass(frozen=True)
class TaskData:
    """One split of a domain's task. `labels` are class ids, or floats for regression."""

    texts: list[str]
    texts_b: list[str] | None
    labels: list[int] | list[float]
    label_names: list[str]
    is_regression: bool

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)


def resolve_domain(cfg: DomainConfig) -> Domain:
    """Turn a (path-resolved) DomainConfig into a Domain; explicit files override `path`."""
    if cfg.corpus and cfg.hf_dataset:
        raise InputError(f"domain '{cfg.name}': set either `corpus` or `hf_dataset`, not both")
    directory = Path(cfg.path) if cfg.path else None

    def pick(explicit: str | None, filename: str) -> Path | None:
        if explicit:
            return Path(explicit)
        return directory / filename if directory else None

    corpus = None
    if cfg.corpus and not is_uri(cfg.corpus):
        corpus = Path(cfg.corpus)
    elif directory and not cfg.hf_dataset and not cfg.corpus:
        found = [directory / f for f in CORPUS_FILES if (directory / f).is_file()]
        corpus = found[0] if found else directory / CORPUS_FILES[-1]
    return Domain(
        name=cfg.name,
        directory=directory,
        corpus=corpus,
        hf_dataset=cfg.hf_dataset,
        hf_split=cfg.hf_split,
        text_column=cfg.text_column,
        train=pick(cfg.train, "train.jsonl"),
        dev=pick(cfg.dev, "dev.jsonl"),
        test=pick(cfg.test, "test.jsonl"),
        labels=pick(cfg.labels, "labels.json"),
        verbalizers=dict(cfg.verbalizers) if cfg.verbalizers else None,
        corpus_uri=cfg.corpus if is_uri(cfg.corpus) else None,
        task_source=cfg.task,
    )


def localize_corpus(domain: Domain, cache_dir: Path | str) -> Domain:
    """The domain with a remote corpus replaced by its local copy (fetched once); else itself."""
    if domain.corpus_uri is None:
        return domain
    return replace(domain, corpus=fetch(domain.corpus_uri, cache_dir, f"corpus of domain '{domain.name}'"))


def validate_domain(domain: Domain) -> DomainSummary:
    """Read every file of `domain` in full; raise InputError naming the first problem."""
    if domain.directory is not None and not domain.directory.is_dir():
        raise InputError(f"domain '{domain.name}': directory not found: {domain.directory}")
    n_docs = n_chars = 0
    for doc in iter_documents(domain):
        n_docs += 1
        n_chars += len(doc)
    if n_docs == 0:
        raise InputError(f"{domain.corpus_source}: corpus of domain '{domain.name}' is empty (no non-blank document)")
    if n_docs == 1:
        raise InputError(f"{domain.corpus_source}: corpus of domain '{domain.name}' has one document; at least 2 "
                         "are needed (documents are split between training and the held-out diagnostics)")
    tasks = {split: read_task(domain, split) for split in SPLITS}
    pair = {split: task.texts_b is not None for split, task in tasks.items()}
    if len(set(pair.values())) > 1:
        with_b = [s for s, p in pair.items() if p]
        raise InputError(f"domain '{domain.name}': only the {'/'.join(with_b)} split(s) have `text_b`; all splits must agree")
    train = tasks["train"]
    return DomainSummary(
        name=domain.name,
        corpus_source=domain.corpus_source,
        n_docs=n_docs,
        n_chars=n_chars,
        examples={split: len(task) for split, task in tasks.items()},
        label_names=train.label_names,
        is_pair=pair["train"],
        is_regression=train.is_regression,
    )


# ----------------------------------------------------------------------------- corpus


def read_corpus(domain: Domain, max_docs: int | None = None, max_doc_chars: int = 20000) -> list[str]:
    """The first `max_docs` non-blank documents, stripped, each cut to `max_doc_chars` characters."""
    docs: list[str] = []
    for doc in iter_documents(domain):
        if max_docs is not None and len(docs) >= max_docs:
            break
        docs.append(doc[:max_doc_chars])
    return docs


def iter_documents(domain: Domain) -> Iterator[str]:
    """Every non-blank corpus document, stripped, in file order."""
    if domain.hf_dataset:
        texts: Iterator[Any] = _hf_texts(domain)
    elif (path := corpus_file(domain)).suffix == ".parquet":
        texts = _parquet_texts(path, domain.text_column)
    else:
        texts = _text_lines(path)
    for text in texts:
        if text is not None and (doc := text.strip()):
            yield doc


def corpus_file(domain: Domain) -> Path:
    """The domain's corpus file; InputError when there is none or it is missing."""
    if domain.corpus is None:
        if domain.corpus_uri:
            raise InputError(f"{domain.corpus_uri}: remote corpus of domain '{domain.name}' was not fetched (localize_corpus)")
        raise InputError(f"domain '{domain.name}': no corpus; set `path`, `corpus` or `hf_dataset`")
    if not domain.corpus.is_file():
        raise InputError(f"{domain.corpus}: corpus file of domain '{domain.name}' not found")
    return domain.corpus


def _text_lines(path: Path) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            yield _decode(raw, path, lineno)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start})") from None


def _parquet_texts(path: Path, column: str) -> Iterator[str | None]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    schema = pf.schema_arrow
    if column not in schema.names or not _is_string(schema.field(column).type):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise InputError(f"{path}: needs a string column '{column}' (found {found})")
    for batch in pf.iter_batches(columns=[column]):
        yield from batch.column(0).to_pylist()


def _is_string(tp: pa.DataType) -> bool:
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_string_view(tp)


def _hf_texts(domain: Domain) -> Iterator[Any]:
    import datasets  # imported on use: only hub-backed domains pay for it

    where = f"domain '{domain.name}': hf_dataset '{domain.hf_dataset}' (split '{domain.hf_split}')"
    try:
        ds = datasets.load_dataset(domain.hf_dataset, split=domain.hf_split)
    except Exception as e:  # noqa: BLE001 - any loader failure (offline, missing, bad split) is an input problem
        raise InputError(f"{where} could not be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if domain.text_column not in ds.column_names:
        raise InputError(f"{where}: no column '{domain.text_column}' (text_column); columns: {', '.join(ds.column_names)}")
    feature = ds.features[domain.text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise InputError(f"{where}: column '{domain.text_column}' (text_column) holds {feature}, not strings")
    yield from ds[domain.text_column]


# ----------------------------------------------------------------------------- task


def read_task(domain: Domain, split: str) -> TaskData:
    """Read and check one split (`train`, `dev` or `test`); labels become ids via labels.json."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if domain.task_source is not None:
        return _read_hf_task(domain, split)
    path = getattr(domain, split)
    if path is None:
        raise InputError(f"domain '{domain.name}': no {split} file; set `path` or `{split}`")
    if not path.is_file():
        raise InputError(f"{path}: {split} split of domain '{domain.name}' not found")
    label_names = read_label_names(domain)
    is_regression = label_names is None
    index = {name: i for i, name in enumerate(label_names or [])}
    texts: list[str] = []
    texts_b: list[str] = []
    labels: list[Any] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            row = _parse_row(line, path, lineno)
            has_b = "text_b" in row
            if texts and has_b != bool(texts_b):
                raise InputError(f"{path}:{lineno}: {'has' if has_b else 'lacks'} `text_b` unlike the lines before it")
            texts.append(row["text"])
            if has_b:
                texts_b.append(row["text_b"])
            if is_regression:
                labels.append(_float_label(row["label"], path, lineno))
            elif isinstance(row["label"], str) and row["label"] in index:
                labels.append(index[row["label"]])
            else:
                valid = ", ".join(label_names or [])
                raise InputError(f"{path}:{lineno}: label {row['label']!r} is not in {domain.labels} (valid: {valid})")
    if not texts:
        raise InputError(f"{path}: {split} split of domain '{domain.name}' is empty")
    return TaskData(texts, texts_b or None, labels, label_names or [], is_regression)


def _parse_row(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(row, dict):
        raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    for key in ("text", "text_b"):
        value = row.get(key)
        if key == "text_b" and value is None:
            row.pop(key, None)
        elif not isinstance(value, str) or not value.strip():
            raise InputError(f"{path}:{lineno}: '{key}' must be a non-empty string, got {value!r}")
    if "label" not in row:
        raise InputError(f"{path}:{lineno}: missing 'label'")
    return row


def _float_label(value: Any, path: Path, lineno: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{path}:{lineno}: label {value!r} is not a finite number (regression task)")
    return float(value)


def read_label_names(domain: Domain) -> list[str] | None:
    """The ordered label names from labels.json, or None for a regression task."""
    path = domain.labels
    if path is None:
        raise InputError(f"domain '{domain.name}': no labels file; set `path` or `labels`")
    if not path.is_file():
        raise InputError(f"{path}: labels file of domain '{domain.name}' not found")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if isinstance(spec, dict) and spec.get("type") == "regression":
        return None
    if not isinstance(spec, list) or not all(isinstance(x, str) and x for x in spec):
        raise InputError(f'{path}: expected a list of label names or {{"type": "regression"}}, got {spec!r}')
    if len(spec) < 2:
        raise InputError(f"{path}: a classification task needs at least 2 labels, got {spec!r}")
    duplicates = sorted({x for x in spec if spec.count(x) > 1})
    if duplicates:
        raise InputError(f"{path}: duplicate label(s) {', '.join(duplicates)}")
    return spec


# ----------------------------------------------------------------------------- task from a HF dataset

_hf_task_cache: dict[str, Any] = {}


def _hf_task_dataset(domain: Domain) -> Any:
    """The task's DatasetDict (memoised per process): `load_from_disk` for a folder, else
    `load_dataset` (offline: from the local cache)."""
    import datasets  # imported on use: only domains with a HF task pay for it

    source = domain.task_source.hf_dataset
    if source not in _hf_task_cache:
        where = f"domain '{domain.name}': task.hf_dataset '{source}'"
        try:
            ds = datasets.load_from_disk(source) if Path(source).is_dir() else datasets.load_dataset(source)
        except Exception as e:  # noqa: BLE001 - any loader failure (offline, missing, corrupt) is an input problem
            first = str(e).splitlines()[0] if str(e) else ""
            raise InputError(f"{where} could not be loaded: {type(e).__name__}: {first}") from None
        if not isinstance(ds, datasets.DatasetDict):
            raise InputError(f"{where} is a single split; save a DatasetDict holding the train/dev/test splits")
        _hf_task_cache[source] = ds
    return _hf_task_cache[source]


def hf_task_fingerprints(domain: Domain) -> dict[str, str]:
    """The `datasets` fingerprint of each split the task uses (for the manifest)."""
    ds, splits = _hf_task_dataset(domain), domain.task_source.splits
    return {role: ds[getattr(splits, role)]._fingerprint for role in SPLITS if getattr(splits, role) in ds}


def _hf_label_names(domain: Domain, feature: Any, values: list, where: str) -> list[str] | None:
    """Label names of a HF label column: ClassLabel names, labels.json, or the sorted strings of
    train; None for a float (regression) column."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    elif getattr(feature, "dtype", "").startswith("float"):
        return None
    elif domain.labels is not None and domain.labels.is_file():
        names = read_label_names(domain) or []
    elif getattr(feature, "dtype", None) in ("string", "large_string"):
        names = sorted({v for v in values if isinstance(v, str)})
    else:
        raise InputError(f"{where}: label column holds {feature}; cast it to ClassLabel (the names become the labels), "
                         "or give the domain a `labels` file")
    if len(names) < 2:
        raise InputError(f"{where}: a classification task needs at least 2 labels, got {names}")
    return names


def _read_hf_task(domain: Domain, split: str) -> TaskData:
    """One split of a HF-dataset task, checked like a jsonl split (one line naming split, row and column)."""
    src = domain.task_source
    ds = _hf_task_dataset(domain)
    name = getattr(src.splits, split)
    where = f"domain '{domain.name}': task.hf_dataset '{src.hf_dataset}'"
    if name not in ds:
        raise InputError(f"{where} has no split '{name}' (task.splits.{split}); splits: {', '.join(ds)}")
    data = ds[name]
    columns = {"text": src.columns.text, "text_b": src.columns.text_b, "label": src.columns.label}
    for role, column in columns.items():
        if column is not None and column not in data.column_names:
            raise InputError(f"{where}[{name}]: no column '{column}' (task.columns.{role}); "
                             f"columns: {', '.join(data.column_names)}")
    if len(data) == 0:
        raise InputError(f"{where}[{name}]: {split} split is empty")
    train_split = ds[src.splits.train] if src.splits.train in ds else data
    label_feature = train_split.features[columns["label"]]
    label_names = _hf_label_names(domain, label_feature, train_split[columns["label"]], f"{where}[{src.splits.train}]")
    if split != "train" and data.features[columns["label"]] != label_feature:
        raise InputError(f"{where}[{name}]: label column is {data.features[columns['label']]}, "
                         f"unlike {label_feature} in '{src.splits.train}'")
    texts = {role: data[columns[role]] for role in ("text", "text_b") if columns[role] is not None}
    index = {n: i for i, n in enumerate(label_names or [])}
    labels: list[Any] = []
    for row, value in enumerate(data[columns["label"]]):
        for role, values in texts.items():
            if not isinstance(values[row], str) or not values[row].strip():
                raise InputError(f"{where}[{name}] row {row}: '{columns[role]}' (task.columns.{role}) must be a "
                                 f"non-empty string, got {values[row]!r}")
        if label_names is None:
            labels.append(_float_label(value, Path(f"{src.hf_dataset}[{name}]"), row))
        elif isinstance(value, bool):
            raise InputError(f"{where}[{name}] row {row}: label {value!r} is not a class")
        elif isinstance(value, int) and 0 <= value < len(label_names):
            labels.append(value)
        elif isinstance(value, str) and value in index:
            labels.append(index[value])
        else:
            raise InputError(f"{where}[{name}] row {row}: label {value!r} is not one of {', '.join(label_names)}"
                             + (" (-1: an unlabeled example)" if value == -1 else ""))
    return TaskData(list(texts["text"]), list(texts["text_b"]) if "text_b" in texts else None, labels,
                    label_names or [], label_names is None)
