"""Consistency calibration (CoCa, docs/methods.md): agree the task head with the pre-defined head.

Two heads read the task embedding e(x): the task head, p_task = softmax(W e(x) + b), and the
pre-defined head, p_pre = softmax of the MLM head's logits at the verbalizer tokens. The
plug-in adds

    L_predefined  = alpha * CE(pre-defined logits(x), y)
    L_consistency = beta  * mean_batch D(p_task(x + delta*), p_pre(x + delta*))

    D = KL(p||q) + KL(q||p)  ("sym_kl")  or  1/2 KL(p||m) + 1/2 KL(q||m), m = (p + q) / 2  ("js")

delta* [B, T, d] perturbs the input embeddings E(x); it approximately maximises D within a ball,
by K steps of normalised projected gradient ascent from Gaussian noise (SMART / VAT style).
The ball (`radius`):

    "per_token" (default): ||delta_t|| <= epsilon * ||E(x)_t|| for every token t: epsilon is a
        fraction of each token's own embedding norm, and step_size and noise_std are too:
        delta_0 = P(noise_std * ||E(x)_t|| * u_t),  u_t ~ N(0, I_d) / sqrt(d)
        delta_{k+1} = P(delta_k + step_size * ||E(x)_t|| * g_t / ||g_t||)   (per token)
    "absolute" (as first implemented): ||delta_i|| <= epsilon, the L2 norm of example i's whole
        [T, d] slice, with absolute step_size / noise_std and the step normalised per example.
        With MiniLM (token norm ~1.2) epsilon = 1e-3 is ~1e-4 of ||E(x_i)||: the ascent then
        barely moves D and the term is the divergence at the clean input (docs/methods.md).

g_k = dD/d delta at delta_k; P zeroes padding positions and scales into the ball.
The ascent passes run the model in its current mode (dropout on in training) and take
gradients with respect to delta only; the parameters get gradient from the final D(delta*).
The consistency weight may be ramped in (`ramp`): beta_s = beta * min(1, s / (ramp * S)) at
fine-tuning step s of S (ramp = 0: full weight from the first step), so the pre-defined head is
trained by its cross-entropy before the task head is pulled towards it.
Cost per step: K + 1 extra forwards and K + 1 extra backwards (K with respect to delta only, one
inside the main backward), counted in extra_forwards / extra_backwards; none when beta = 0.
alpha = 0 skips the pre-defined cross-entropy; alpha = beta = 0 is exactly the baseline.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from components.config import CocaConfig, Config
from components.errors import InputError
from components.finetune.plugin import FinetunePlugin
from components.finetune.verbalizers import verbalizer_ids
from components.models.task_model import TaskBatch, TaskModel, TaskOutput

Divergence = Literal["sym_kl", "js"]


def divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, kind: Divergence) -> torch.Tensor:
    """Per-example D between softmax(p_logits) and softmax(q_logits), [B, C] -> [B] (float32).

    sym_kl = sum_c (p_c - q_c)(log p_c - log q_c);  js = 1/2 sum_c [p_c log(p_c/m_c) + q_c log(q_c/m_c)],
    0 <= js <= log 2.
    """
    lp = F.log_softmax(p_logits.float(), dim=-1)
    lq = F.log_softmax(q_logits.float(), dim=-1)
    if kind == "sym_kl":
        return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))


def coca_of(model: TaskModel) -> "Coca":
    """The CoCa plug-in inside `model` (it holds the pre-defined head's verbalizers)."""
    return next(p for p in model.plugins if isinstance(p, Coca))


def head_divergence(model: TaskModel, out: TaskOutput, kind: Divergence) -> torch.Tensor:
    """D(p_task, p_pre) per example for one forward's output."""
    return divergence(out.logits, coca_of(model).predefined_logits(model, out), kind)


Radius = Literal["per_token", "absolute"]


def project(delta: torch.Tensor, mask: torch.Tensor, epsilon: float | torch.Tensor,
            radius: Radius = "absolute") -> torch.Tensor:
    """Zero padding positions (mask [B, T, 1]) and scale into the ball: "absolute" ||delta_i||
    <= epsilon per example; "per_token" ||delta_t|| <= epsilon[b, t] ([B, T, 1] bounds)."""
    delta = delta * mask
    if radius == "per_token":
        norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return delta * (epsilon / norms).clamp(max=1.0)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (epsilon / norms).clamp(max=1.0).view(-1, 1, 1)


def _unit(g: torch.Tensor, radius: Radius) -> torch.Tensor:
    """g scaled to unit norm per token ("per_token") or per example ("absolute")."""
    if radius == "per_token":
        return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)


def adversarial_delta(
    model: TaskModel,
    batch: TaskBatch,
    epsilon: float,
    steps: int,
    step_size: float,
    noise_std: float,
    kind: Divergence,
    radius: Radius = "absolute",
) -> torch.Tensor:
    """delta* [B, T, d] (detached): `steps` normalised ascent steps on D, projected (module doc)."""
    table = model.mlm.backbone.get_input_embeddings().weight
    noise = torch.randn(*batch.input_ids.shape, table.shape[1], device=table.device, dtype=table.dtype)
    mask = batch.attention_mask.unsqueeze(-1).to(table.dtype)
    scale: float | torch.Tensor = 1.0
    if radius == "per_token":  # every length below is a fraction of the token's own embedding norm
        with torch.no_grad():
            scale = model.mlm.embed(batch.input_ids).norm(dim=-1, keepdim=True).to(table.dtype)
        noise = noise / math.sqrt(table.shape[1])
    bound = epsilon * scale
    delta = project(noise_std * scale * noise, mask, bound, radius)
    for _ in range(steps):
        delta.requires_grad_(True)
        d = head_divergence(model, model(batch, delta), kind).sum()
        (grad,) = torch.autograd.grad(d, delta)
        delta = project(delta.detach() + step_size * scale * _unit(grad * mask, radius), mask, bound, radius)
    return delta.detach()


class Coca(FinetunePlugin):
    """CoCa's loss terms {"predefined", "consistency"}; the work of a zero-weight term is skipped.

    `num_labels` as in TaskData.num_labels (1 for a regression task, which CoCa cannot serve).
    """

    name = "coca"

    def __init__(self, cfg: CocaConfig, num_labels: int, task: str = "task",
                 verbalizers: torch.Tensor | None = None, calibrated_head: bool = False):
        super().__init__()
        if num_labels < 2:
            raise InputError(
                f"finetune.coca: task '{task}' has {num_labels} output (regression); CoCa needs classes "
                "(set finetune.coca.enabled: false)"
            )
        self.cfg = cfg
        self.beta_scale = 1.0  # the ramp's factor at the current step (set_progress)
        self.calibrated_head = calibrated_head   # the MLM head reads the calibrated Z (RepCali mlm_head)
        self.register_buffer("verbalizer_ids", verbalizers if verbalizers is not None
                             else torch.empty(0, dtype=torch.long))

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return cfg.finetune.coca.enabled

    @classmethod
    def reads_slot(cls, cfg: Config) -> bool:
        """The pre-defined head is the MLM head at the template's mask slot."""
        return True

    @classmethod
    def pools_at_slot(cls, cfg: Config) -> bool:
        return cfg.finetune.coca.task_head_at_slot

    @classmethod
    def validate(cls, cfg: Config, tasks, tokenizer) -> None:
        """Every task has classes and a distinct verbalizer token per class."""
        for i, t in enumerate(tasks):
            if t.label_names is None:
                raise InputError(f"finetune.coca: task '{t.name}' is a regression task; CoCa needs classes")
            verbalizer_ids(t.label_names, tokenizer, t.verbalizers, where=f"domains[{i}].verbalizers")

    @classmethod
    def build(cls, cfg: Config, mlm, task, tokenizer, base_weights, plugin_state):
        index = [d.name for d in cfg.domains].index(task.name)
        ids, notes = verbalizer_ids(task.label_names or [], tokenizer, task.verbalizers,
                                    where=f"domains[{index}].verbalizers")
        r = cfg.finetune.repcali
        return cls(cfg.finetune.coca, task.num_labels, task.name, ids, r.enabled and r.mlm_head), notes

    def predefined_logits(self, model: TaskModel, out: TaskOutput) -> torch.Tensor:
        """The MLM head at the slot, restricted to one verbalizer token per class: [B, C]."""
        h = out.slot if self.calibrated_head else out.raw_slot
        if h is None:
            raise ValueError("CoCa: the batch has no mask slot (encode the task with its template: mask_pos)")
        return model.mlm.mlm_logits(h)[:, self.verbalizer_ids]

    def set_progress(self, step: int, total: int) -> None:
        """beta_s / beta = min(1, s / (ramp * S)) (1 when ramp = 0)."""
        ramp = self.cfg.ramp * total
        self.beta_scale = 1.0 if ramp <= 0 else min(1.0, step / ramp)

    def loss_terms(self, model: TaskModel, batch: TaskBatch, out: TaskOutput) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        zero = out.logits.new_zeros((), dtype=torch.float32)
        terms = {"predefined": zero, "consistency": zero}
        if cfg.alpha == 0 and cfg.beta == 0:
            return terms
        if self.verbalizer_ids.numel() != out.logits.shape[-1]:
            raise ValueError(
                f"CoCa: {self.verbalizer_ids.numel()} verbalizer ids for {out.logits.shape[-1]} classes "
                "(build it with verbalizer_ids(...))"
            )
        if cfg.alpha > 0:
            terms["predefined"] = cfg.alpha * F.cross_entropy(self.predefined_logits(model, out).float(), batch.labels)
        beta = cfg.beta * self.beta_scale
        if beta > 0:
            delta = adversarial_delta(
                model, batch, cfg.epsilon, cfg.steps, cfg.step_size, cfg.noise_std, cfg.divergence, cfg.radius
            )
            terms["consistency"] = beta * head_divergence(model, model(batch, delta), cfg.divergence).mean()
            self.extra_forwards += cfg.steps + 1
            self.extra_backwards += cfg.steps + 1
        return terms
