"""One in-process pre-training stage on the tiny model: its spec and its final weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoModelForMaskedLM

from components.checkpoint import load_module
from components.config import REPO_ROOT, load_config
from components.models.loading import load_masked_lm, load_tokenizer
from components.pretrain.loop import LocalSession, StageSpec
from components.pretrain.plugin import Tokens
from tests.helpers.tiny import stage_info


def make_spec(tiny_model_dir: Path, overrides: list[str] = ()) -> StageSpec:
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"],
                      [f"model.name={tiny_model_dir}", "pretrain.batch_size=4", "pretrain.max_steps=6",
                       "pretrain.checkpoint_every=3", "pretrain.log_every=1", "model.block_size=16", *overrides])
    tok = load_tokenizer(str(tiny_model_dir))
    hf, _ = load_masked_lm(str(tiny_model_dir))
    blocks = np.random.default_rng(0).integers(1000, 5000, (64, 16)).astype(np.int32)
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    stage = stage_info(1, "d1", ("d1",))
    return StageSpec(config=cfg, stage=stage, tokens=Tokens(len(tok), tok.mask_token_id, tok.pad_token_id,
                                                              list(tok.all_special_ids)),
                     init_weights={k: v.clone() for k, v in hf.state_dict().items()}, train_blocks=blocks,
                     total_steps=6)


def final_weights(session: LocalSession, model_dir: Path) -> dict:
    hf = AutoModelForMaskedLM.from_pretrained(model_dir)
    load_module(hf, session.checkpoints[-1] / "model.safetensors")
    return hf.state_dict()
