"""The one tiny masked LM of the unit tests, and the one StageInfo factory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (BertConfig, BertForMaskedLM, MPNetConfig, MPNetForMaskedLM, PreTrainedModel,
                          RobertaConfig, RobertaForMaskedLM)

from components.pretrain.plugin import StageInfo

FAMILIES = {"bert": (BertConfig, BertForMaskedLM), "roberta": (RobertaConfig, RobertaForMaskedLM),
            "mpnet": (MPNetConfig, MPNetForMaskedLM)}


def tiny_hf_mlm(vocab_size: int, max_positions: int = 64, kind: str = "bert", pad_token_id: int = 0,
                seed: int = 0) -> PreTrainedModel:
    """A randomly initialised masked LM (hidden 32, 2 layers, 2 heads, FFN 64) of family `kind`,
    drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    config_cls, model_cls = FAMILIES[kind]
    return model_cls(config_cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=max_positions,
                                pad_token_id=pad_token_id))


def stage_info(i: int = 1, domain: str = "a", order: tuple[str, ...] = ("a", "b", "c"), work_dir: Path = Path("."),
               files: dict[str, str] | None = None) -> StageInfo:
    """Stage i of `order`, training `domain`, having seen order[:i]."""
    return StageInfo(index=i, domain=domain, domains_seen=list(order[:i]), domain_order=list(order),
                     work_dir=work_dir, files=dict(files or {}))
