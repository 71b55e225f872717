"""HPrompt-CPT as a pre-training plug-in (docs/methods.md; the paper's abstract + our design).

On domain t the loop minimises

    L = L_MLM(x; P(q(x))) + lambda_agree * L_agree + lambda_dis * L_dis

    q(x)     mean-pooled last hidden state of the frozen stage-0 model on the (masked) input
    P(q)     hypernetwork prompts [B, L_p, d], prepended to the input embeddings
    L_agree  mean over non-pad positions and dims of (H_theta(x; P(v)) - H_0(x))^2,
             v = mu + noise_scale * sigma * eps, eps ~ N(0, I) per example ("virtual query");
             mu, sigma^2 = running mean / variance of the queries (momentum `momentum`)
    L_dis    mean over the batch of max(0, cos(h(x; P(q(x))), sg[h(x; P(c_k))]) - margin),
             h = mean-pooled hidden states, c_k = prototype (mean query) of ONE earlier domain
             k sampled per step, sg = stop-gradient (`stop_grad_negative`, default): the
             negative is a fixed target, so L_dis moves neither the earlier domains' prompts
             P(c_k) nor the states under them. On the first domain (no prototype yet) there
             is no negative and L_dis = 0, unless `virtual_negative` takes the virtual-query
             prompt P(v) of L_agree (as first implemented: it pushes h(x; P(q)) away from the
             states L_agree ties to stage 0, see docs/methods.md)

Forwards per step (NCL: 1 with grad):
    1 no-grad forward of the frozen stage-0 model -> q(x) and the teacher states H_0(x)
      (2 under query_view "visible": q(x) on the visible tokens, H_0(x) on the masked block)
    1 main forward of the current model with P(q(x))  (the loop's forward, reused for L_dis)
    1 forward of the current model with P(v)           (L_agree; doubles as L_dis's negative
                                                         on the first domain with virtual_negative)
    1 forward of the current model with P(c_k)         (L_dis, only once a prototype exists;
                                                         no backward under stop_grad_negative)
i.e. 3 forwards (2 with backward) on every domain by default. A term whose lambda is 0 (or
L_dis without a negative) is returned as an exact 0 tensor and its forward is skipped.

The query's text view (`query_view`): at fine-tuning the query is computed on clean text. At
pre-training, "visible" (default) runs the stage-0 model on the masked block with the MLM-selected
positions (labels != -100) removed from its attention mask, so the query reads the real tokens
only, as at fine-tuning, and never the identities of the masked tokens (no label leakage); the
agreement teacher H_0 is then a second no-grad forward on the masked block as the MLM sees it.
"masked" (as first implemented) pools the stage-0 states of the masked block, [MASK] tokens
included: with MiniLM that query has cosine ~0.4-0.5 with the clean text's (docs/methods.md), so
the hypernetwork is trained on queries unlike the ones it gets at fine-tuning.

State (all in `state_dict()`, so the loop's safetensors checkpoint round-trips it):
hypernetwork weights, running query mean / variance / update count, the prototype matrix
[n_done, d] (a buffer whose row count grows; loading resizes it), and the prototype names as
`_extra_state` (a uint8 tensor of JSON, so even a bare `safetensors.save_file` works). The
names are also given by `meta()` / `load_meta()` as JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from components.config import Config, HPromptConfig
from components.errors import InputError
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM, mean_pool
from components.models.hypernetwork import (
    Hypernetwork,
    PromptGenerator,
    QueryEncoder,
    build_prompt_generator,
)
from components.pretrain.plugin import Driver, PretrainPlugin, StageInfo

__all__ = [
    "HPromptPlugin",
    "Hypernetwork",
    "PromptGenerator",
    "QueryEncoder",
    "QueryMemory",
    "agreement_loss",
    "build_prompt_generator",
    "check_prompt_fits",
    "disagreement_loss",
    "usable_positions",
]


# ----------------------------------------------------------------------------- checks


def check_prompt_fits(block_size: int, prompt_length: int, max_positions: int, key: str = "model.block_size") -> None:
    """Raise InputError unless `prompt_length` prompt slots + `block_size` tokens (the config's
    `key`: pre-training blocks, or fine-tuning's `finetune.max_length`) fit the model."""
    if block_size + prompt_length > max_positions:
        raise InputError(
            f"methods.hprompt.prompt_length: {prompt_length} prompt slots + {key} {block_size} "
            f"= {block_size + prompt_length} positions, but the model has only {max_positions}; "
            f"lower methods.hprompt.prompt_length or {key} to at most {max_positions} in total"
        )


def check_prompt_width(model_config) -> None:
    """Raise InputError when the input embeddings are narrower than the hidden states (ELECTRA's
    `embedding_size`): prompts are built at the hidden width and prepended to the embeddings."""
    hidden = model_config.hidden_size
    width = getattr(model_config, "embedding_size", None) or hidden
    if width != hidden:
        raise InputError(
            f"methods.hprompt: {model_config.model_type} embeds tokens at width {width} but its hidden states "
            f"are {hidden} wide; prompts need the two equal (use a model with embedding_size = hidden_size, "
            "or turn methods.hprompt off)"
        )


def usable_positions(model: MaskedLM) -> int:
    """Positions a sequence may occupy: max_position_embeddings, minus RoBERTa/MPNet's
    padding offset (their position ids start at padding_idx + 1)."""
    emb = getattr(model.backbone, "embeddings", None)
    pad = getattr(emb, "padding_idx", None)
    return model.max_positions - (pad + 1 if isinstance(pad, int) else 0)


# ----------------------------------------------------------------------------- losses


def agreement_loss(hidden: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over non-pad positions (and all d dims) of [B, T, d] hidden states."""
    m = attention_mask.unsqueeze(-1).float()
    sq = (hidden.float() - teacher.float()).pow(2) * m
    return sq.sum() / (m.sum() * hidden.shape[-1]).clamp_min(1.0)


def disagreement_loss(own: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the batch of max(0, cos(own_b, negative_b) - margin); inputs [B, d]."""
    cos = F.cosine_similarity(own.float(), negative.float(), dim=-1, eps=1e-8)
    return F.relu(cos - margin).mean()


# ----------------------------------------------------------------------------- state


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class QueryMemory(nn.Module):
    """Running query statistics and the per-domain query prototypes (identical on every rank)."""

    def __init__(self, hidden_size: int, momentum: float = 0.99):
        super().__init__()
        self.hidden_size, self.momentum = hidden_size, momentum
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("var", torch.ones(hidden_size))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(0, hidden_size))
        self.names: list[str] = []

    # -- running statistics
    @torch.no_grad()
    def update(self, queries: torch.Tensor) -> None:
        """Fold a batch of queries [B, d] into the running mean / variance (in place, so DDP's
        buffer references stay valid). Under torch.distributed the batch moments are summed
        over ranks first, so every rank applies the same update."""
        q = queries.detach().to(torch.float64)
        moments = torch.cat([q.sum(0), q.pow(2).sum(0), q.new_tensor([q.shape[0]])])
        if _distributed():
            dist.all_reduce(moments)
        d = self.hidden_size
        n = moments[-1].clamp_min(1.0)
        mean = moments[:d] / n
        var = (moments[d:2 * d] / n - mean.pow(2)).clamp_min(0.0)
        if int(self.num_updates) == 0:
            self.mean.copy_(mean)
            self.var.copy_(var)
        else:
            m = self.momentum
            self.mean.mul_(m).add_((1 - m) * mean.to(self.mean.dtype))
            self.var.mul_(m).add_((1 - m) * var.to(self.var.dtype))
        self.num_updates.add_(1)

    def virtual_queries(self, n: int, noise_scale: float) -> torch.Tensor:
        """mu + noise_scale * sigma * eps, eps ~ N(0, I): [n, d] (global RNG, seeded by the loop)."""
        eps = torch.randn(n, self.hidden_size, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + noise_scale * self.var.sqrt() * eps

    # -- prototypes
    def add_prototype(self, name: str, prototype: torch.Tensor) -> None:
        row = prototype.detach().to(self.prototypes.device, self.prototypes.dtype).view(1, -1)
        if name in self.names:  # the stage was finished again: replace, never duplicate
            protos = self.prototypes.clone()
            protos[self.names.index(name)] = row[0]
            self.prototypes = protos
        else:
            self.prototypes = torch.cat([self.prototypes, row], 0)
            self.names.append(name)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(list(json.dumps({"prototype_names": self.names}).encode()), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        if isinstance(state, torch.Tensor):
            state = json.loads(bytes(state.to(torch.uint8).tolist()).decode())
        names = list(state["prototype_names"])
        self._check_names(names)
        self.names = names

    def _check_names(self, names: list[str]) -> None:
        if len(names) != self.prototypes.shape[0]:
            raise ValueError(f"{len(names)} prototype names for {self.prototypes.shape[0]} prototypes")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        incoming = state_dict.get(prefix + "prototypes")
        if isinstance(incoming, torch.Tensor) and incoming.dim() == 2 and incoming.shape[1] == self.hidden_size:
            if incoming.shape != self.prototypes.shape:  # the row count grows with every finished domain
                self.prototypes = torch.empty(incoming.shape, dtype=self.prototypes.dtype, device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


# ----------------------------------------------------------------------------- plug-in


class HPromptPlugin(PretrainPlugin):
    """Hypernetwork prompts with agreement / disagreement terms (see the module docstring).

    `base` is the stage-0 MaskedLM; a frozen deep copy of it becomes the query encoder
    (`copy_base=False` uses the object itself: pass that only for a model nobody trains).
    For stages after the first, build a fresh plug-in and `load_stage_state` the previous
    stage's plug-in state + meta (hypernetwork, running statistics, prototypes).
    """

    name = "hprompt"

    def __init__(
        self,
        cfg: HPromptConfig,
        base: MaskedLM,
        block_size: int | None = None,
        copy_base: bool = True,
        proto_batch_size: int = 64,
    ):
        super().__init__()
        if block_size is not None:
            check_prompt_fits(block_size, cfg.prompt_length, usable_positions(base))
        self.cfg = cfg
        self.proto_batch_size = proto_batch_size
        d = base.hidden_size
        init_std = float(base.backbone.get_input_embeddings().weight.detach().float().std())
        self.generator = PromptGenerator(
            QueryEncoder(base, copy_model=copy_base), Hypernetwork(d, cfg.prompt_length, cfg.rank, init_std)
        )
        self.memory = QueryMemory(d, cfg.momentum)
        self.current_domain: str | None = None

    # -- the plug-in contract (driver side)

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return cfg.methods.hprompt.enabled

    @classmethod
    def validate(cls, cfg: Config, model_config) -> None:
        """Prompts fit the model's positions in pre-training blocks and in fine-tuning inputs."""
        check_prompt_width(model_config)
        max_pos = model_config.max_position_embeddings - 2
        check_prompt_fits(cfg.model.block_size, cfg.methods.hprompt.prompt_length, max_pos)
        check_prompt_fits(cfg.finetune.max_length, cfg.methods.hprompt.prompt_length, max_pos, "finetune.max_length")

    @classmethod
    def prepare_stage(cls, cfg: Config, stage: StageInfo, blocks, fingerprint: str, driver: Driver) -> dict:
        return {"base_weights": driver.base_weights()}   # the query encoder is the stage-0 model

    @classmethod
    def build(cls, cfg: Config, model: MaskedLM, payload: dict) -> "HPromptPlugin":
        base = MaskedLM(masked_lm_from_state(cfg.model.name, payload["base_weights"]))
        return cls(cfg.methods.hprompt, base, block_size=cfg.model.block_size, copy_base=False)

    # -- convenience
    @property
    def prototype_names(self) -> list[str]:
        return list(self.memory.names)

    def meta(self) -> dict:
        """JSON-serialisable state that is not a tensor (the loop writes it to meta.json)."""
        return {"prototype_names": list(self.memory.names)}

    def load_meta(self, meta: Mapping) -> None:
        names = list(meta.get("prototype_names", []))
        self.memory._check_names(names)
        self.memory.names = names

    def load_stage_state(self, state: Mapping[str, torch.Tensor], meta: Mapping | None = None, prefix: str = "") -> None:
        """Load a (previous) stage's plug-in state; `prefix` strips e.g. the loop's '0.'."""
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.load_state_dict(own)
        if meta is not None:
            self.load_meta(meta)

    def prompt_generator(self) -> PromptGenerator:
        """The generator trained here (shares weights; for fine-tuning prefer
        `build_prompt_generator` from a saved state)."""
        return self.generator

    # -- hooks
    def begin_stage(self, stage: StageInfo, model: MaskedLM) -> None:
        if model.hidden_size != self.memory.hidden_size:
            raise InputError(
                f"methods.hprompt: model width {model.hidden_size} != stage-0 query encoder width {self.memory.hidden_size}"
            )
        self.current_domain = stage.domain

    def prefix(self, model: MaskedLM, batch: dict[str, torch.Tensor], ctx: dict) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        query, teacher = self.generator.encoder(ids, mask)
        if self.cfg.query_view == "visible" and "labels" in batch:
            query, _ = self.generator.encoder(ids, mask * (batch["labels"] == -100).to(mask.dtype))
        if self.training:
            self.memory.update(query)
        ctx["hprompt/query"], ctx["hprompt/teacher"] = query, teacher
        return self.generator.hypernet(query)

    def _negative_index(self) -> int | None:
        """One earlier domain's prototype row, drawn uniformly (None: no earlier domain)."""
        rows = [i for i, n in enumerate(self.memory.names) if n != self.current_domain]
        if not rows:
            return None
        return rows[int(torch.randint(len(rows), (1,)))]

    def loss_terms(
        self, model: MaskedLM, batch: dict[str, torch.Tensor], hidden: torch.Tensor, ctx: dict
    ) -> dict[str, torch.Tensor]:
        la, ld = float(self.cfg.lambda_agree), float(self.cfg.lambda_dis)
        terms = {"agree": hidden.new_zeros((), dtype=torch.float32),
                 "disagree": hidden.new_zeros((), dtype=torch.float32)}
        if la == 0.0 and ld == 0.0:
            return terms
        if "hprompt/teacher" not in ctx:
            raise RuntimeError("HPromptPlugin.loss_terms called without its prefix() in the same step")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = model.embed(ids)
        neg_row = self._negative_index() if ld > 0 else None
        virtual_neg = ld > 0 and neg_row is None and self.cfg.virtual_negative
        virtual_hidden = None
        if la > 0 or virtual_neg:
            v = self.memory.virtual_queries(ids.shape[0], self.cfg.noise_scale)
            virtual_hidden = model.encode(embeds, mask, self.generator.hypernet(v))
            if la > 0:
                terms["agree"] = la * agreement_loss(virtual_hidden, ctx["hprompt/teacher"], mask)
        if ld > 0 and (neg_row is not None or virtual_neg):
            if neg_row is None:
                neg_hidden = virtual_hidden
            else:
                with torch.no_grad() if self.cfg.stop_grad_negative else contextlib.nullcontext():
                    proto_prompt = self.generator.hypernet(self.memory.prototypes[neg_row:neg_row + 1])
                    neg_hidden = model.encode(embeds, mask, proto_prompt.expand(ids.shape[0], -1, -1))
            if self.cfg.stop_grad_negative:
                neg_hidden = neg_hidden.detach()
            terms["disagree"] = ld * disagreement_loss(mean_pool(hidden, mask), mean_pool(neg_hidden, mask), self.cfg.margin)
        return terms

    @torch.no_grad()
    def end_stage(self, stage: StageInfo, model: MaskedLM, blocks: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Prototype of the finished domain = mean query over every rank's clean blocks."""
        self.memory.add_prototype(stage.domain, self.domain_prototype(blocks, attention_mask))

    @torch.no_grad()
    def domain_prototype(self, blocks: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean query [d] over this worker's blocks, summed with the other ranks' (sum, count)."""
        device = self.memory.mean.device
        total = torch.zeros(self.memory.hidden_size + 1, dtype=torch.float64, device=device)
        for s in range(0, blocks.shape[0], self.proto_batch_size):
            ids = blocks[s:s + self.proto_batch_size].to(device)
            mask = attention_mask[s:s + self.proto_batch_size].to(device)
            query, _ = self.generator.encoder(ids, mask)
            total[:-1] += query.to(torch.float64).sum(0)
            total[-1] += query.shape[0]
        if _distributed():
            dist.all_reduce(total)
        if total[-1] <= 0:
            raise ValueError("HPromptPlugin.end_stage: no blocks on any worker, cannot compute the domain prototype")
        return (total[:-1] / total[-1]).to(torch.float32)
