"""A domain's task from a Hugging Face dataset (`task: {hf_dataset, splits, columns}`): a
save_to_disk folder with ClassLabel integer labels, checked like jsonl tasks."""

from __future__ import annotations

import datasets
import pytest

from components.config import REPO_ROOT, load_config
from components.data.domains import _hf_task_cache, read_task, resolve_domain, validate_domain
from components.errors import InputError
from tests.helpers.hf import NAMES, _rows, hf_domain, laptop_as_hf


def config(*overrides):
    return load_config([REPO_ROOT / "pipelines/configs/default.yaml"], list(overrides))


def test_classlabel_task_reads_like_the_jsonl_task(tmp_path):
    cfg = config(hf_domain(laptop_as_hf(tmp_path / "hf")))
    domain = resolve_domain(cfg.domains[0])
    summary = validate_domain(domain)
    assert summary.label_names == NAMES and summary.examples == {"train": 60, "dev": 60, "test": 60}
    assert not summary.is_pair and not summary.is_regression
    hf = read_task(domain, "dev")
    rows = _rows("dev", 60)
    assert hf.texts == [r["text"] for r in rows]
    assert [hf.label_names[i] for i in hf.labels] == [r["label"] for r in rows]


def test_string_labels_take_their_sorted_names(tmp_path):
    def as_strings(split, columns):
        return {**columns, "label": [NAMES[i] for i in columns["label"]]}

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("string")})
    folder = tmp_path / "hf"
    datasets.DatasetDict({s: datasets.Dataset.from_dict(as_strings(s, {"sentence": ["a b", "c d", "e f"],
                                                                       "label": [0, 1, 2]}), features=features)
                          for s in ("train", "validation", "test")}).save_to_disk(str(folder))
    _hf_task_cache.clear()
    task = read_task(resolve_domain(config(hf_domain(folder)).domains[0]), "test")
    assert task.label_names == sorted(NAMES[:3]) and [task.label_names[i] for i in task.labels] == NAMES[:3]


@pytest.mark.parametrize("task, mutate, message", [
    ({"splits": {"dev": "dev"}}, None, r"has no split 'dev' \(task.splits.dev\); splits: train, validation, test"),
    ({"columns": {"text": "text"}}, None, r"\[train\]: no column 'text' \(task.columns.text\); columns: sentence, label"),
    ({}, lambda s, c: {**c, "sentence": [""] + c["sentence"][1:]} if s == "test" else c,
     r"\[test\] row 0: 'sentence' \(task.columns.text\) must be a non-empty string, got ''"),
    ({}, lambda s, c: {**c, "label": [-1] + c["label"][1:]} if s == "validation" else c,
     r"\[validation\] row 0: label -1 is not one of .* \(-1: an unlabeled example\)"),
])
def test_bad_task_is_one_line_naming_split_row_and_column(tmp_path, task, mutate, message):
    cfg = config(hf_domain(laptop_as_hf(tmp_path / "hf", n=5, mutate=mutate), **task))
    with pytest.raises(InputError, match=message) as err:
        validate_domain(resolve_domain(cfg.domains[0]))
    assert "\n" not in str(err.value) and "domain 'laptop'" in str(err.value)


def test_unusable_sources_are_refused(tmp_path):
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]}).save_to_disk(str(single))
    ints = tmp_path / "ints"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]})
                          for s in ("train", "validation", "test")}).save_to_disk(str(ints))
    _hf_task_cache.clear()
    for folder, message in ((single, "is a single split"), (ints, "cast it to ClassLabel"),
                            (tmp_path / "missing", "could not be loaded")):
        with pytest.raises(InputError, match=message):
            validate_domain(resolve_domain(config(hf_domain(folder)).domains[0]))
    with pytest.raises(InputError, match=r"unknown config key 'domains\[0\].task.colums'"):
        config("domains=[{name: x, path: data/laptop, task: {hf_dataset: y, colums: {}}}]")
    with pytest.raises(InputError, match=r"no task; give `path`, train/dev/test files, or `task`"):
        config("domains=[{name: x, corpus: data/laptop/corpus.parquet}]")
