"""Domain layout, full validation, and one-line InputErrors that name the file, line or field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import REPO_ROOT, DomainConfig
from components.data.domains import (SPLITS, Domain, localize_corpus, read_corpus, read_task, resolve_domain,
                                     validate_domain)
from components.errors import InputError

LABELS = ["positive", "negative"]
ROWS = [{"text": "great food", "label": "positive"}, {"text": "cold soup", "label": "negative"}]
SHIPPED = {  # train/dev/test sizes of the shipped benchmark (data/README.md)
    "restaurant": (3452, 150, 1120),
    "laptop": (2163, 150, 638),
    "acl": (1688, 114, 139),
    "ai": (3219, 455, 974),
    "biomed": (4169, 2427, 3469),
    "tweet": (3257, 374, 1421),
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_layout(root: Path, corpus: str = "first doc\n\n  second doc  \n", rows: list[dict] = ROWS, labels: object = LABELS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text(corpus, encoding="utf-8")
    for split in SPLITS:
        write_jsonl(root / f"{split}.jsonl", rows)
    (root / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    return root


def write_parquet(path: Path, docs: list, column: str = "text") -> None:
    pq.write_table(pa.table({column: docs}), path)


def domain(root: Path, **fields: object) -> Domain:
    return resolve_domain(DomainConfig(name="toy", path=str(root), **fields))


def expect_error(dom: Domain, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        validate_domain(dom)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- bad inputs


def test_missing_domain_directory(tmp_path: Path) -> None:
    expect_error(domain(tmp_path / "nowhere"), "directory not found", str(tmp_path / "nowhere"))


def test_missing_corpus(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "corpus.txt").unlink()
    expect_error(domain(root), str(root / "corpus.txt"), "not found")


def test_empty_corpus(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d", corpus=" \n\n\t\n")
    expect_error(domain(root), str(root / "corpus.txt"), "empty")


def test_corpus_not_utf8(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "corpus.txt").write_bytes(b"fine line\nbad \xff\xfe line\n")
    expect_error(domain(root), f"{root / 'corpus.txt'}:2", "not valid UTF-8", "0xff")


def test_parquet_corpus_without_string_text_column(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_parquet(root / "corpus.parquet", ["a doc"], column="body")
    expect_error(domain(root), str(root / "corpus.parquet"), "string column 'text'", "body")
    write_parquet(root / "corpus.parquet", [1, 2])
    expect_error(domain(root), "string column 'text'", "text: int64")


def test_corrupt_parquet_corpus(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "corpus.parquet").write_bytes(b"not parquet at all")
    expect_error(domain(root), str(root / "corpus.parquet"), "not a readable Parquet file")


def test_jsonl_line_not_json(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    expect_error(domain(root), f"{root / 'train.jsonl'}:2", "not valid JSON")


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "dev.jsonl").write_text('["text", "label"]\n', encoding="utf-8")
    expect_error(domain(root), f"{root / 'dev.jsonl'}:1", "expected a JSON object, got list")


@pytest.mark.parametrize("row", [{"label": "positive"}, {"text": "  ", "label": "positive"}, {"text": 3, "label": "positive"}])
def test_line_lacking_text(tmp_path: Path, row: dict) -> None:
    root = make_layout(tmp_path / "d")
    write_jsonl(root / "train.jsonl", [ROWS[0], row])
    expect_error(domain(root), f"{root / 'train.jsonl'}:2", "'text' must be a non-empty string")


def test_line_lacking_label(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_jsonl(root / "test.jsonl", [ROWS[0], ROWS[1], {"text": "no label here"}])
    expect_error(domain(root), f"{root / 'test.jsonl'}:3", "missing 'label'")


def test_label_not_in_labels_json(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_jsonl(root / "dev.jsonl", [ROWS[0], {"text": "meh", "label": "neutral"}])
    expect_error(domain(root), f"{root / 'dev.jsonl'}:2", "'neutral'", str(root / "labels.json"), "valid: positive, negative")


def test_missing_split_file(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "test.jsonl").unlink()
    expect_error(domain(root), str(root / "test.jsonl"), "test split", "not found")


def test_empty_split(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "dev.jsonl").write_text("\n  \n", encoding="utf-8")
    expect_error(domain(root), str(root / "dev.jsonl"), "dev split", "is empty")


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [(["a", "b", "a"], "duplicate label(s) a"), ({"type": "ordinal"}, "expected a list of label names"), (["only"], "at least 2 labels"), (["a", 1], "expected a list")],
)
def test_bad_labels_json(tmp_path: Path, labels: object, fragment: str) -> None:
    root = make_layout(tmp_path / "d", labels=labels)
    expect_error(domain(root), str(root / "labels.json"), fragment)


def test_labels_json_not_json(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    (root / "labels.json").write_text("[positive, negative]", encoding="utf-8")
    expect_error(domain(root), str(root / "labels.json"), "not valid JSON")


def test_regression_label_not_a_number(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d", rows=[{"text": "a", "label": 1.5}, {"text": "b", "label": "high"}], labels={"type": "regression"})
    expect_error(domain(root), f"{root / 'train.jsonl'}:2", "'high'", "not a finite number")


def test_text_b_on_some_lines_only(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_jsonl(root / "train.jsonl", [{**ROWS[0], "text_b": "b"}, ROWS[1]])
    expect_error(domain(root), f"{root / 'train.jsonl'}:2", "lacks `text_b`")


def test_text_b_in_some_splits_only(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_jsonl(root / "test.jsonl", [{**r, "text_b": "other"} for r in ROWS])
    expect_error(domain(root), "domain 'toy'", "only the test split(s) have `text_b`")


def test_explicit_files_without_labels(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    cfg = DomainConfig(name="toy", corpus=str(root / "corpus.txt"), **{s: str(root / f"{s}.jsonl") for s in SPLITS})
    expect_error(resolve_domain(cfg), "domain 'toy'", "no labels file", "`labels`")


def test_corpus_and_hf_dataset_together(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="either `corpus` or `hf_dataset`"):
        resolve_domain(DomainConfig(name="toy", corpus=str(tmp_path / "c.txt"), hf_dataset="some/dataset"))


def test_hf_dataset_unreachable_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root = make_layout(tmp_path / "d")
    dom = domain(root, hf_dataset="nobody/no-such-dataset")
    assert dom.corpus is None and dom.train == root / "train.jsonl"
    expect_error(dom, "hf_dataset 'nobody/no-such-dataset'", "could not be loaded")


def test_hf_dataset_from_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "hub").mkdir()
    write_parquet(tmp_path / "hub" / "train.parquet", ["hub doc one", " ", "hub doc two"], column="body")
    root = make_layout(tmp_path / "d")
    assert read_corpus(domain(root, hf_dataset=str(tmp_path / "hub"), text_column="body")) == ["hub doc one", "hub doc two"]
    expect_error(domain(root, hf_dataset=str(tmp_path / "hub")), "no column 'text' (text_column)", "body")
    write_parquet(tmp_path / "hub" / "train.parquet", [1, 2], column="body")
    expect_error(domain(root, hf_dataset=str(tmp_path / "hub"), text_column="body"), "column 'body' (text_column) holds", "not strings")


# ----------------------------------------------------------------------------- valid layouts


def test_valid_txt_layout(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    dom = domain(root)
    assert dom.corpus == root / "corpus.txt" and dom.labels == root / "labels.json"
    summary = validate_domain(dom)
    assert (summary.n_docs, summary.n_chars) == (2, len("first doc") + len("second doc"))
    assert summary.examples == {"train": 2, "dev": 2, "test": 2}
    assert summary.label_names == LABELS
    assert not summary.is_pair and not summary.is_regression
    assert read_corpus(dom) == ["first doc", "second doc"]


def test_parquet_preferred_over_txt_and_explicit_fields_override(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d")
    write_parquet(root / "corpus.parquet", ["parquet doc", None, "", "another parquet doc"])
    dom = domain(root)
    assert dom.corpus == root / "corpus.parquet"
    assert validate_domain(dom).n_docs == 2
    assert read_corpus(dom) == ["parquet doc", "another parquet doc"]
    other = tmp_path / "other.txt"
    other.write_text("explicit corpus\n", encoding="utf-8")
    assert read_corpus(domain(root, corpus=str(other))) == ["explicit corpus"]


def test_read_corpus_limits(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d", corpus="x" * 50 + "\n\nshort\nthird\n")
    assert read_corpus(domain(root), max_docs=2, max_doc_chars=10) == ["x" * 10, "short"]


def test_pair_detection(tmp_path: Path) -> None:
    rows = [{"text": "food", "text_b": "The food was great.", "label": "positive", "id": "1"}, {"text": "soup", "text_b": "Cold soup.", "label": "negative"}]
    dom = domain(make_layout(tmp_path / "d", rows=rows))
    assert validate_domain(dom).is_pair
    task = read_task(dom, "dev")
    assert task.texts == ["food", "soup"] and task.texts_b == ["The food was great.", "Cold soup."]


def test_regression_labels(tmp_path: Path) -> None:
    rows = [{"text": "a", "text_b": "b", "label": 5}, {"text": "c", "text_b": "d", "label": 0.25}]
    dom = domain(make_layout(tmp_path / "d", rows=rows, labels={"type": "regression", "range": [0.0, 5.0]}))
    summary = validate_domain(dom)
    assert summary.is_regression and summary.label_names == []
    task = read_task(dom, "train")
    assert task.labels == [5.0, 0.25] and all(isinstance(x, float) for x in task.labels)
    assert task.num_labels == 1


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_domain(name: str) -> None:
    root = REPO_ROOT / "data" / name
    if not root.is_dir():
        pytest.skip(f"{root} not built")
    summary = validate_domain(resolve_domain(DomainConfig(name=name, path=str(root))))
    assert tuple(summary.examples.values()) == SHIPPED[name]
    assert summary.n_docs > 1000 and summary.corpus_source.endswith("corpus.parquet")
    assert summary.is_pair == (name in ("restaurant", "laptop"))


def test_shipped_task_with_a_txt_corpus(tmp_path: Path) -> None:
    """The corpus.txt form of a real domain, given by explicit per-file fields."""
    root = REPO_ROOT / "data" / "laptop"
    if not root.is_dir():
        pytest.skip(f"{root} not built")
    docs = read_corpus(domain(root), max_docs=200)
    (tmp_path / "corpus.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    files = {s: str(root / f"{s}.jsonl") for s in SPLITS}
    cfg = DomainConfig(name="laptop", corpus=str(tmp_path / "corpus.txt"), labels=str(root / "labels.json"), **files)
    summary = validate_domain(resolve_domain(cfg))
    assert summary.n_docs == 200 and summary.examples["train"] == SHIPPED["laptop"][0]
    assert summary.label_names == ["negative", "neutral", "positive"]


# ----------------------------------------------------------------------------- corpus given as a URI


def test_corpus_uri_is_fetched_once_and_refetched_when_the_source_changes(tmp_path: Path) -> None:
    """A file:// URI takes the same pyarrow.fs path as s3:// or gs:// (no network here)."""
    root = make_layout(tmp_path / "d")
    remote = tmp_path / "bucket" / "corpus.parquet"
    remote.parent.mkdir()
    write_parquet(remote, ["remote doc one", "remote doc two"])
    uri = remote.as_uri()
    dom = domain(root, corpus=uri)
    assert dom.corpus is None and dom.corpus_uri == uri and dom.corpus_source == uri
    with pytest.raises(InputError, match="not fetched"):
        validate_domain(dom)                      # nothing reads a remote corpus before it is fetched
    cache = tmp_path / "cache"
    local = localize_corpus(dom, cache)
    assert local.corpus.parent == cache / "remote" and local.corpus.suffix == ".parquet"
    assert validate_domain(local).n_docs == 2 and validate_domain(local).corpus_source == uri
    assert read_corpus(local) == ["remote doc one", "remote doc two"]
    first = local.corpus.stat().st_mtime_ns
    assert localize_corpus(dom, cache).corpus.stat().st_mtime_ns == first   # stamp matches: no download
    write_parquet(remote, ["changed doc"])
    assert read_corpus(localize_corpus(dom, cache)) == ["changed doc"]       # source changed: fetched again
    assert sorted(p.name for p in (cache / "remote").iterdir() if p.name.startswith(".fetch-")) == []


@pytest.mark.parametrize("uri, fragment", [
    ("file:///no/such/bucket/corpus.parquet", "not found"),
    ("nosuchscheme://bucket/corpus.parquet", "cannot be read"),
    ("file:///tmp/corpus.csv", "must end in .parquet or .txt"),
])
def test_bad_corpus_uri(tmp_path: Path, uri: str, fragment: str) -> None:
    dom = domain(make_layout(tmp_path / "d"), corpus=uri)
    with pytest.raises(InputError) as info:
        localize_corpus(dom, tmp_path / "cache")
    assert fragment in str(info.value) and uri in str(info.value) and "toy" in str(info.value)
