"""The one fine-tuning loop (anytime cells and experts; methods plug loss terms into it).

    L = L_task + sum of the plug-ins' weighted terms,
    L_task = CE(logits, y) for classification, MSE(logit, y) for regression.

AdamW (backbone lr, head/new-module lr), linear warmup + decay, `evals_per_epoch` dev
evaluations per epoch; the state with the best dev score is kept in memory and scored on test.
A regression score (Pearson r) is NaN where undefined (constant predictions or labels): a NaN
dev score never beats a number, and the first evaluated state is kept when none is a number.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from components.config import FinetuneConfig
from components.finetune.plugin import FinetunePlugin
from components.models.compile import CompiledStep, resolve_compile
from components.models.precision import autocast_for
from components.models.schedule import fused_adamw, make_scheduler
from components.models.task_model import TaskBatch, TaskModel, batches, infer


@dataclass
class FinetuneResult:
    accuracy: float
    macro_f1: float
    best_dev: float
    dev_curve: list[dict] = field(default_factory=list)
    steps: int = 0
    extra_forwards: int = 0
    extra_backwards: int = 0
    best_state: dict | None = None
    test_predicted_counts: list[int] | None = None  # per class, argmax on test (None for regression)
    test_label_counts: list[int] | None = None


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def predict(model: TaskModel, data: dict[str, torch.Tensor], batch_size: int, device: torch.device,
            precision: str = "auto") -> np.ndarray:
    model.eval()

    def logits(b: TaskBatch) -> torch.Tensor:
        with autocast_for(device, precision):
            return model(b.to(device)).logits.float().cpu()

    out = infer(logits, data, batch_size * 2)
    model.train()
    return out.numpy()


def train_step(forward: torch.nn.Module, model: TaskModel, plugins: list[FinetunePlugin], b: TaskBatch,
               regression: bool, device: torch.device, precision: str) -> torch.Tensor:
    """Forward (through `forward`: the model or its compiled form) and backward of one batch; the loss.
    Plug-ins see the eager `model`."""
    with autocast_for(device, precision):
        out = forward(b)
        loss = task_loss(out.logits, b.labels, regression)
        for p in plugins:
            for term in p.loss_terms(model, b, out).values():
                loss = loss + term
    loss.backward()
    return loss


def score(logits: np.ndarray, labels: torch.Tensor, regression: bool) -> dict[str, float]:
    """Classification (scikit-learn): accuracy = (1/n) sum_i [pred_i = gold_i] and macro-F1 = mean over
    the classes in gold or pred of 2 P_c R_c / (P_c + R_c) (0 where undefined).
    Regression: both slots hold Pearson r in [-1, 1],

        r = cov(pred, gold) / (std(pred) std(gold)),

    NaN where it is undefined (fewer than 2 examples, or constant predictions or labels)."""
    gold = labels.numpy()
    if regression:
        pred = logits[:, 0].astype(np.float64)
        gold = gold.astype(np.float64)
        if len(gold) < 2 or pred.std() == 0 or gold.std() == 0:
            return {"accuracy": math.nan, "macro_f1": math.nan}
        r = float(np.clip(np.corrcoef(pred, gold)[0, 1], -1.0, 1.0))
        return {"accuracy": r, "macro_f1": r}
    pred = logits.argmax(-1)
    return {"accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}


def _better(new: float, best: float) -> bool:
    """`new` beats `best`: a number beats NaN, NaN beats nothing."""
    return not math.isnan(new) and (math.isnan(best) or new > best)


def param_groups(model: TaskModel, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups: the encoder at cfg.lr, each plug-in with its own `lr` at that rate, every other
    new parameter (task head, plug-ins without a rate) at cfg.head_lr. Frozen parameters are left out."""
    own = {id(p): plugin.lr for plugin in model.plugins if plugin.lr is not None for p in plugin.parameters()}
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            lr = cfg.lr if n.startswith("mlm.") else own.get(id(p), cfg.head_lr)
            groups.setdefault(lr, []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


def finetune(
    model: TaskModel,
    plugins: list[FinetunePlugin],
    train: dict[str, torch.Tensor],
    dev: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    cfg: FinetuneConfig,
    seed: int,
    device: torch.device,
    regression: bool = False,
    keep_best_state: bool = False,
) -> FinetuneResult:
    """Fine-tune `model` on `train`, select on `dev`, score on `test`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    optimizer = fused_adamw(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    n = len(train["labels"])
    per_epoch = max(1, -(-n // cfg.batch_size))
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    scheduler = make_scheduler(optimizer, total, cfg.warmup_ratio, "linear")
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)
    result = FinetuneResult(accuracy=0.0, macro_f1=0.0, best_dev=-float("inf"))
    best_state = None
    step = 0
    runner = CompiledStep(model, resolve_compile(cfg.compile, device, total), "fine-tuning step", dynamic=True)
    while step < total:
        for b in batches(train, cfg.batch_size, rng.permutation(n)):
            b = b.to(device)
            for p in plugins:
                p.set_progress(step, total)
            loss = runner(lambda module, b=b: train_step(module, model, plugins, b, regression, device, cfg.precision),
                          lambda: optimizer.zero_grad(set_to_none=True))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % eval_every == 0 or step == total:
                dev_score = score(predict(model, dev, cfg.batch_size, device, cfg.precision), dev["labels"], regression)
                result.dev_curve.append({"step": step, "loss": float(loss.detach()), **dev_score})
                if best_state is None or _better(dev_score["accuracy"], result.best_dev):
                    result.best_dev = dev_score["accuracy"]
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if step >= total:
                break
    model.load_state_dict(best_state)
    test_logits = predict(model, test, cfg.batch_size, device, cfg.precision)
    test_score = score(test_logits, test["labels"], regression)
    result.accuracy, result.macro_f1, result.steps = test_score["accuracy"], test_score["macro_f1"], step
    if not regression:  # a cell that predicts one class for every example shows here
        classes = test_logits.shape[1]
        result.test_predicted_counts = np.bincount(test_logits.argmax(-1), minlength=classes).tolist()
        result.test_label_counts = np.bincount(test["labels"].numpy(), minlength=classes).tolist()
    result.extra_forwards = sum(p.extra_forwards for p in plugins)
    result.extra_backwards = sum(p.extra_backwards for p in plugins)
    result.best_state = best_state if keep_best_state else None
    return result
