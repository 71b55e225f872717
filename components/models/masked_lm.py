"""A Hugging Face masked LM split into backbone + MLM head, driven through input embeddings.

Every forward starts from input embeddings, so methods can prepend prompt vectors (HPrompt)
or perturb the embeddings (CoCa) without forking the model code. The MLM loss projects onto
the vocabulary only at masked positions:

    L_MLM = mean over masked positions m of  -log softmax(W h_m + b)[y_m]

which costs M * d * V instead of B * T * d * V (the stock HF head projects every position).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from components.errors import InputError

IGNORE = -100


class _DistilBertHead(nn.Module):
    def __init__(self, hf: PreTrainedModel):
        super().__init__()
        self.transform, self.act = hf.vocab_transform, hf.activation
        self.norm, self.decoder = hf.vocab_layer_norm, hf.vocab_projector

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.transform(h))))


class _TwoPartHead(nn.Module):
    """A head kept by the model as two modules: transform (dense, activation, norm), then decoder."""

    def __init__(self, transform: nn.Module, decoder: nn.Module):
        super().__init__()
        self.transform, self.decoder = transform, decoder

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))


# (transform, decoder) attribute pairs of *ForMaskedLM classes whose head is not one module.
TWO_PART_HEADS = {"ModernBERT": ("head", "decoder"), "ELECTRA generator": ("generator_predictions", "generator_lm_head")}
KNOWN_HEADS = ("`cls` (BERT family), `lm_head` (RoBERTa family), `predictions`, DistilBERT's `vocab_*`, "
               + ", ".join(f"{family}'s `{a}` + `{b}`" for family, (a, b) in TWO_PART_HEADS.items()))


def mlm_head_of(hf: PreTrainedModel) -> nn.Module:
    """The module mapping hidden states [..., d] to vocabulary logits [..., V]."""
    for attr in ("cls", "lm_head", "predictions"):
        if isinstance(getattr(hf, attr, None), nn.Module):
            return getattr(hf, attr)
    if hasattr(hf, "vocab_projector"):
        return _DistilBertHead(hf)
    for transform, decoder in TWO_PART_HEADS.values():
        if isinstance(getattr(hf, transform, None), nn.Module) and isinstance(getattr(hf, decoder, None), nn.Linear):
            return _TwoPartHead(getattr(hf, transform), getattr(hf, decoder))
    modules = ", ".join(name for name, _ in hf.named_children())
    raise InputError(f"model class {type(hf).__name__}: its MLM head is not one this project knows (its modules: "
                     f"{modules}; known: {KNOWN_HEADS}); add it to components/models/masked_lm.py")


class MaskedLM(nn.Module):
    """Backbone + MLM head with an embedding-level forward."""

    def __init__(self, hf: PreTrainedModel):
        super().__init__()
        self.hf = hf
        self.head = mlm_head_of(hf)
        # ModernBERT's encoder takes no token types; BERT-style encoders do.
        self.takes_token_types = "token_type_ids" in inspect.signature(self.backbone.forward).parameters

    @property
    def backbone(self) -> nn.Module:
        return self.hf.base_model

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    @property
    def embedding_size(self) -> int:
        """Width of the input embeddings (ELECTRA: `embedding_size`, projected to `hidden_size` inside)."""
        return self.backbone.get_input_embeddings().embedding_dim

    @property
    def max_positions(self) -> int:
        return self.hf.config.max_position_embeddings

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(input_ids)

    def encode(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states [B, T, d] of the token positions.

        `prefix` [B, P, d] (prompt vectors) is prepended to the embeddings with its attention
        mask set to 1; its positions are dropped from the output.
        """
        if prefix is not None and prefix.shape[1] == 0:
            prefix = None  # an empty prefix is no prefix (no copy: the same kernels as without one)
        if prefix is not None:
            p = prefix.shape[1]
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], p), attention_mask], 1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([token_type_ids.new_zeros(token_type_ids.shape[0], p), token_type_ids], 1)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.takes_token_types else {}
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs).last_hidden_state
        return hidden if prefix is None else hidden[:, prefix.shape[1]:]

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at masked positions only (labels == -100 elsewhere)."""
        picked = labels != IGNORE
        logits = self.head(hidden[picked])
        return F.cross_entropy(logits.float(), labels[picked])


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over non-padding positions: [B, T, d] -> [B, d]."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
