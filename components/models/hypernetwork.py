"""Input-conditioned prompts for HPrompt-CPT (docs/methods.md): query encoder + hypernetwork.

    q(x)  = mean-pooled last hidden state of the FROZEN stage-0 model on x       [B, d]
    P(q)  = reshape(W2 GELU(W1 LayerNorm(q) + b1) + b2, [L_p, d])                [B, L_p, d]

The prompt depends on the input only (no domain id anywhere), so the same generator serves
pre-training (through `HPromptPlugin`) and fine-tuning (as `TaskModel(prompter=...)`).

The frozen stage-0 model is deliberately NOT a registered sub-module of `QueryEncoder`: it is
not in `parameters()` (so no optimizer or DDP reducer ever sees it), not in `state_dict()`
(checkpoints hold the hypernetwork only, not a second copy of the backbone), and never
switched to train mode. `QueryEncoder._apply` forwards `.to(device/dtype)` to it, so moving
the owning module moves the frozen model too.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from components.models.masked_lm import MaskedLM, mean_pool


class Hypernetwork(nn.Module):
    """LayerNorm(d) -> Linear(d, r) -> GELU -> Linear(r, L_p * d), reshaped to [B, L_p, d].

    The last Linear starts at N(0, (init_std / sqrt(r))^2) with zero bias, so every prompt
    entry starts with std below `init_std` (the plug-in passes the word-embedding std): the
    initial prompts look like small word embeddings rather than like noise of unit scale.
    """

    def __init__(self, hidden_size: int, prompt_length: int, rank: int = 128, init_std: float = 0.02):
        super().__init__()
        self.hidden_size, self.prompt_length, self.rank = hidden_size, prompt_length, rank
        self.norm = nn.LayerNorm(hidden_size)
        self.down = nn.Linear(hidden_size, rank)
        self.act = nn.GELU()
        with warnings.catch_warnings():  # prompt_length 0 (an exact no-op prompt) warns about empty init
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.up = nn.Linear(rank, prompt_length * hidden_size)
        with torch.no_grad():
            self.up.weight.normal_(0.0, init_std / math.sqrt(rank))
            self.up.bias.zero_()

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """[B, d] (or [d]) query -> [B, L_p, d] prompts."""
        if query.dim() == 1:
            query = query.unsqueeze(0)
        out = self.up(self.act(self.down(self.norm(query.to(self.norm.weight.dtype)))))
        return out.view(query.shape[0], self.prompt_length, self.hidden_size)


class QueryEncoder(nn.Module):
    """A frozen copy of the stage-0 model; one no-grad forward gives the query and the
    token hidden states (the agreement teacher)."""

    def __init__(self, base: MaskedLM, copy_model: bool = True):
        super().__init__()
        frozen = copy.deepcopy(base) if copy_model else base
        frozen.eval()
        frozen.requires_grad_(False)
        for p in frozen.parameters():
            p.grad = None  # a deep copy would carry the source's accumulated gradients
        object.__setattr__(self, "_frozen", frozen)  # hidden from parameters()/state_dict()/train()

    @property
    def model(self) -> MaskedLM:
        return self._frozen

    @property
    def hidden_size(self) -> int:
        return self._frozen.hidden_size

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._frozen._apply(fn)
        return self

    @torch.no_grad()
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query [B, d] float32, token hidden states [B, T, d]) of the stage-0 model."""
        m = self._frozen
        if m.training:  # someone called .train() on the model object directly
            m.eval()
        hidden = m.encode(m.embed(input_ids), attention_mask, None, token_type_ids)
        return mean_pool(hidden.float(), attention_mask), hidden


class PromptGenerator(nn.Module):
    """QueryEncoder + Hypernetwork: prompter(input_ids, attention_mask) -> [B, L_p, d]."""

    def __init__(self, encoder: QueryEncoder, hypernet: Hypernetwork):
        super().__init__()
        if encoder.hidden_size != hypernet.hidden_size:
            raise ValueError(f"query encoder width {encoder.hidden_size} != hypernetwork width {hypernet.hidden_size}")
        self.encoder = encoder
        self.hypernet = hypernet

    @property
    def prompt_length(self) -> int:
        return self.hypernet.prompt_length

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        query, _ = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.hypernet(query)


HYPERNET_PREFIX = "generator.hypernet."


def build_prompt_generator(
    base: MaskedLM,
    prompt_length: int,
    rank: int,
    plugin_state: Mapping[str, torch.Tensor] | None = None,
    freeze_hypernet: bool = True,
    copy_model: bool = True,
) -> PromptGenerator:
    """The fine-tuning prompter: stage-0 `base` as query encoder plus the hypernetwork trained
    so far: the keys `[...]generator.hypernet.*` of an `HPromptPlugin.state_dict()`, with or
    without an outer prefix such as the loop's `0.`; other keys (running statistics,
    prototypes) are ignored. `freeze_hypernet` follows
    `methods.hprompt.freeze_hypernet_at_finetune`.
    """
    hyper = Hypernetwork(base.hidden_size, prompt_length, rank)
    if plugin_state is not None:
        own: dict[str, torch.Tensor] = {}
        for k, v in plugin_state.items():
            if HYPERNET_PREFIX in k:
                name = k.split(HYPERNET_PREFIX, 1)[1]
                if name in own:
                    raise ValueError(f"plugin state holds two hypernetworks (duplicate key {k!r})")
                own[name] = v
        hyper.load_state_dict(own)  # strict: a shape mismatch (prompt_length / rank) fails loudly
    hyper.requires_grad_(not freeze_hypernet)
    return PromptGenerator(QueryEncoder(base, copy_model=copy_model), hyper)
