"""Typed config: YAML merge order, --set overrides, unknown keys, types, ranges, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import REPO_ROOT, Config, leaf_keys, load_config, merge
from components.errors import InputError

DEFAULT = REPO_ROOT / "pipelines/configs/default.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_files_merge_in_order_mappings_merge_lists_replace(tmp_path):
    a = write(tmp_path, "a.yaml", "pretrain: {lr: 1.0e-4, batch_size: 8}\nfinetune: {seeds: [0, 1, 2]}\n")
    b = write(tmp_path, "b.yaml", "pretrain: {lr: 3.0e-4}\nfinetune: {seeds: [5]}\n")
    cfg = load_config([DEFAULT, a, b])
    assert cfg.pretrain.lr == 3.0e-4          # later file wins
    assert cfg.pretrain.batch_size == 8        # mapping merged, sibling kept
    assert cfg.finetune.seeds == [5]           # list replaced, not appended
    assert [d.name for d in cfg.domains] == ["restaurant", "acl", "tweet"]


def test_set_overrides_are_typed_and_win(tmp_path):
    cfg = load_config([DEFAULT], ["pretrain.max_steps=7", "finetune.coca.enabled=true", "finetune.seeds=[3,4]",
                                  "pretrain.lr=1e-3"])
    assert cfg.pretrain.max_steps == 7 and cfg.finetune.coca.enabled is True
    assert cfg.finetune.seeds == [3, 4]
    assert cfg.pretrain.lr == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string: coerced


def test_set_reaches_into_a_list_item_by_index():
    cfg = load_config([DEFAULT], ["domains.1.path=data/laptop", "domains.2.verbalizers={neutral: fine}"])
    assert cfg.domains[1].path.endswith("data/laptop") and cfg.domains[1].name == "acl"   # sibling keys kept
    assert cfg.domains[2].verbalizers == {"neutral": "fine"}
    with pytest.raises(InputError, match="'domains' is a list of 3; '7' is not an index"):
        load_config([DEFAULT], ["domains.7.path=data/acl"])


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"x": 1, "y": [1, 2]}}
    out = merge(base, {"a": {"y": [3]}})
    assert out == {"a": {"x": 1, "y": [3]}} and base == {"a": {"x": 1, "y": [1, 2]}}


@pytest.mark.parametrize("override, message", [
    ("pretrain.max_stpes=3", "unknown config key 'pretrain.max_stpes'; did you mean 'pretrain.max_steps'?"),
    ("finetune.cocca.alpha=1", "did you mean 'finetune.coca'"),
    ("pretrain.max_steps=abc", "pretrain.max_steps: expected an integer"),
    ("pretrain.max_steps=0", "pretrain.max_steps: 0 is out of range"),
    ("data.mask_prob=1.5", "data.mask_prob: 1.5 is out of range"),
    ("pretrain.schedule=exp", "pretrain.schedule: 'exp' is not one of linear, cosine, constant"),
    ("pretrain.use_gpu=maybe", "pretrain.use_gpu: expected true/false"),
    ("finetune.seeds=[1,1]", "finetune.seeds: duplicate seeds"),
    ("finetune.seeds=3", "finetune.seeds: expected a list"),
])
def test_bad_values_are_rejected_with_the_key(override, message):
    with pytest.raises(InputError) as e:
        load_config([DEFAULT], [override])
    assert message in str(e.value)


def test_duplicate_domain_names(tmp_path):
    f = write(tmp_path, "dup.yaml", "domains: [{name: a, path: data/acl}, {name: a, path: data/ai}]\n")
    with pytest.raises(InputError, match="domains\\[1\\].name: duplicate domain name 'a'"):
        load_config([DEFAULT, f])


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config([tmp_path / "nope.yaml"])
    bad = write(tmp_path, "bad.yaml", "pretrain: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config([bad])
    with pytest.raises(InputError, match="--set expects dotted.key=value"):
        load_config([DEFAULT], ["pretrain.max_steps"])


def test_relative_paths_resolve_against_the_submitting_directory(tmp_path):
    cfg = load_config([DEFAULT], ["data.cache_dir=my-cache"], base_dir=tmp_path)
    assert cfg.data.cache_dir == str(tmp_path / "my-cache")
    # shipped data is found relative to the repository when the cwd has no such folder
    assert cfg.domains[0].path == str(REPO_ROOT / "data/restaurant")


def test_every_shipped_config_and_preset_loads():
    configs = sorted((REPO_ROOT / "pipelines/configs").glob("*.yaml"))
    presets = sorted((REPO_ROOT / "pipelines/configs/methods").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"ncl", "hprompt", "uegp", "moegp", "coca", "repcali", "calibration", "full"}
    for c in configs:
        base = [REPO_ROOT / "pipelines/configs/anytime6.yaml"] if c.stem == "order2" else []
        for p in [None, *presets]:
            cfg = load_config(base + [c] + ([p] if p else []))
            assert isinstance(cfg, Config)
    full = load_config([DEFAULT, REPO_ROOT / "pipelines/configs/methods/full.yaml"])
    assert full.methods.hprompt.enabled and full.methods.distill.mode == "moegp"
    assert full.finetune.coca.enabled and full.finetune.repcali.enabled
    both = load_config([DEFAULT, REPO_ROOT / "pipelines/configs/methods/calibration.yaml"])
    assert both.finetune.coca.enabled and both.finetune.repcali.enabled and both.methods.distill.mode == "none"


def test_leaf_keys_cover_nested_fields():
    keys = leaf_keys()
    assert "finetune.coca.alpha" in keys and "finetune.repcali.rank" in keys and "domains" in keys
