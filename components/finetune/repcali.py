"""Representation calibration block (RepCali, docs/methods.md): between the encoder and the heads.

Specification:  Z = LN(H + lambda * C(H)),  with
    rank 0 (the paper's form):  C(H) = c, one learned vector for all positions;
    rank r > 0 (ours):          C(H) = b + W_up GELU(W_down H), bottleneck r (input dependent).

What we compute (exact-identity form, ours):

    Z = H + [LN(H + lambda C(H)) - LN(H)] = H + gamma * (norm(H + lambda C(H)) - norm(H)),
    norm(x) = (x - mean_d x) / sqrt(var_d x + eps)       (over the hidden dimension)

Why: H is already the output of the encoder's final LayerNorm, so a new LayerNorm with the
copied affine is not the identity on H: LN(H) = gamma * norm(H) + beta != H (on MiniLM,
||LN(H) - H|| / ||H|| is 0.3 to 0.6 over the tokens of a batch and about 0.45 at [CLS], cosine
0.99, mostly a rescaling; tests/test_repcali.py measures it). Taking the calibration as the change it causes
through that LayerNorm moves Z away from LN(H + lambda C(H)) only by H - LN(H), a term that
does not depend on C, and gives
    - Z = H bit for bit at initialisation (C = 0: c = 0, or W_up = 0 and b = 0), for any lambda;
    - Z = H always when lambda = 0: the block is off and fine-tuning is exactly the baseline
      (the block returns H itself: through the formula, dL/dH would be (g + x) - x, which rounds
      differently from g; that alone moved CPU-study cells by up to 0.037, docs/results.md).
The bias beta cancels in the difference, so the block's LayerNorm keeps only its scale gamma
(copied from the encoder's final LayerNorm, with its eps); a bias would be a dead parameter.

Parameters (`parameter_count`): rank 0: d (c) + d (gamma) = 2d;
rank r: (d r + r) (W_down, its bias) + (r d + d) (W_up, b) + d (gamma) = 2 d r + r + 2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.config import Config, RepCaliConfig
from components.errors import InputError
from components.finetune.plugin import FinetunePlugin
from components.models.masked_lm import MaskedLM


def parameter_count(rank: int, d: int) -> int:
    """Trainable parameters of a block: 2d (rank 0), 2 d r + r + 2d (rank r > 0)."""
    return 2 * d if rank == 0 else 2 * d * rank + rank + 2 * d


def final_layer_norm(backbone: nn.Module) -> nn.LayerNorm:
    """The last nn.LayerNorm in module order: the encoder's output norm for BERT, RoBERTa,
    MPNet (`encoder.layer[-1].output.LayerNorm`) and DistilBERT (`...output_layer_norm`)."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise InputError(f"model class {type(backbone).__name__}: no LayerNorm found for the RepCali block")
    return norms[-1]


class RepCali(nn.Module):
    """Z = H + gamma * (norm(H + lam * C(H)) - norm(H)); identity at init (see module docstring)."""

    def __init__(self, d: int, rank: int, lam: float, eps: float = 1e-12):
        super().__init__()
        self.rank, self.lam, self.eps = rank, lam, eps
        self.gamma = nn.Parameter(torch.ones(d))
        if rank == 0:
            self.vector = nn.Parameter(torch.zeros(d))
        else:
            self.down = nn.Linear(d, rank)
            self.up = nn.Linear(rank, d)  # up.bias is b
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    @classmethod
    def from_encoder_norm(cls, norm: nn.LayerNorm, rank: int, lam: float) -> "RepCali":
        """A block whose scale gamma and eps copy the encoder's final LayerNorm."""
        block = cls(norm.normalized_shape[-1], rank, lam, norm.eps)
        if norm.weight is not None:  # a LayerNorm without affine leaves gamma = 1
            block.to(norm.weight.device)
            block.gamma.data.copy_(norm.weight.detach())
        return block

    def correction(self, hidden: torch.Tensor) -> torch.Tensor:
        """C(H): c broadcast over positions (rank 0) or b + W_up GELU(W_down H)."""
        return self.vector if self.rank == 0 else self.up(F.gelu(self.down(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lam == 0:  # off: the formula's forward is H too, but its backward adds x - x to dL/dH
            return hidden
        shape = hidden.shape[-1:]
        shifted = F.layer_norm(hidden + self.lam * self.correction(hidden), shape, eps=self.eps)
        return hidden + self.gamma * (shifted - F.layer_norm(hidden, shape, eps=self.eps))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_repcali(cfg: RepCaliConfig, backbone: nn.Module) -> RepCali:
    """The block for `backbone` (a MaskedLM's `.backbone`) from the config's rank and lambda."""
    return RepCali.from_encoder_norm(final_layer_norm(backbone), cfg.rank, cfg.lam)


class RepCaliPlugin(FinetunePlugin):
    """RepCali as a fine-tuning plug-in: its block is the `calibrate` hook (no loss term).
    `calibrates_mlm_head`: the MLM head (CoCa's pre-defined head) reads Z instead of H."""

    name = "repcali"

    def __init__(self, block: RepCali, calibrates_mlm_head: bool = False, lr: float | None = None):
        super().__init__()
        self.block = block
        self.calibrates_mlm_head = calibrates_mlm_head
        self.lr = lr

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return cfg.finetune.repcali.enabled

    @classmethod
    def build(cls, cfg: Config, mlm: MaskedLM, task, tokenizer, base_weights, plugin_state):
        r = cfg.finetune.repcali
        block = build_repcali(r, mlm.backbone)
        share = block.num_parameters() / sum(p.numel() for p in mlm.parameters())
        note = f"RepCali rank {r.rank}: {block.num_parameters():,} parameters ({100 * share:.3f}% of the model)"
        lr = cfg.finetune.lr if r.lr is None else r.lr  # the encoder's rate: the block moves H as the encoder does
        return cls(block, calibrates_mlm_head=r.mlm_head, lr=lr), [note + f", lr {lr:g}"]

    def calibrate(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block(hidden)
