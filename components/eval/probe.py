"""Linear probes: how linearly decodable a task is from the frozen model's features.

For a (stage, task): features e(x) of the frozen model on the task's train / dev / test splits
(the pooling the fine-tuning head uses, with HPrompt's generated prompts when the run has them),
standardised with the train split's mean and std, then

    classification:  multinomial logistic regression,  min_W  sum_i CE(W z_i + b, y_i) + ||W||^2 / (2C)
    regression:      ridge,                            min_w  sum_i (w.z_i + b - y_i)^2 + alpha ||w||^2

with C (alpha) chosen on dev accuracy (Pearson r) from a fixed grid, refitted on train, scored
on test (accuracy and macro-F1; Pearson r in both slots for regression). The fit is
deterministic given the features, so a probe needs no seeds: one value per (stage, task)
(cf. Davari et al., CVPR 2022, "Probing representation forgetting").
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from components.models.precision import autocast_for
from components.models.task_model import infer

C_GRID = (0.01, 0.1, 1.0, 10.0)
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


@torch.no_grad()
def probe_features(model, data: dict[str, torch.Tensor], batch_size: int, device: torch.device,
                   precision: str = "fp32") -> np.ndarray:
    """e(x) of every example, [n, d] float32: `model` is a TaskModel in eval mode (no dropout)."""
    model.eval().to(device)

    def embedding(b) -> torch.Tensor:
        with autocast_for(device, precision):
            return model(b.to(device)).embedding.float().cpu()

    return infer(embedding, data, batch_size).numpy()


def _pearson(pred: np.ndarray, gold: np.ndarray) -> float | None:
    if len(gold) < 2 or np.std(pred) == 0 or np.std(gold) == 0:
        return None
    return float(np.corrcoef(pred, gold)[0, 1])


def fit_probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray], regression: bool) -> dict:
    """Fit on x["train"], choose the regularisation on x["dev"], score on x["test"].

    Returns {"accuracy", "macro_f1", "reg" (the chosen C or alpha), "dev" (its dev score)}."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    z = {s: scaler.transform(v) for s, v in x.items()}
    best = None
    for reg in (ALPHA_GRID if regression else C_GRID):
        if regression:
            model = Ridge(alpha=reg).fit(z["train"], y["train"])
            dev = _pearson(model.predict(z["dev"]), y["dev"])
            dev = -np.inf if dev is None else dev
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on the weakest regularisation
                model = LogisticRegression(C=reg, max_iter=2000).fit(z["train"], y["train"])
            dev = accuracy_score(y["dev"], model.predict(z["dev"]))
        if best is None or dev > best[0]:
            best = (dev, reg, model)
    dev, reg, model = best
    pred = model.predict(z["test"])
    if regression:
        r = _pearson(pred, y["test"])
        return {"accuracy": r, "macro_f1": r, "reg": reg, "dev": None if dev == -np.inf else float(dev)}
    return {"accuracy": float(accuracy_score(y["test"], pred)),
            "macro_f1": float(f1_score(y["test"], pred, average="macro", zero_division=0)), "reg": reg,
            "dev": float(dev)}


def probe_task(model, data: dict[str, dict[str, torch.Tensor]], regression: bool, batch_size: int,
               device: torch.device, precision: str = "fp32") -> dict:
    """Features of the three splits + the fitted probe's scores (and timings)."""
    t = time.perf_counter()
    x = {s: probe_features(model, d, batch_size, device, precision) for s, d in data.items()}
    feature_s = time.perf_counter() - t
    y = {s: d["labels"].numpy() for s, d in data.items()}
    t = time.perf_counter()
    result = fit_probe(x, y, regression)
    return {**result, "feature_seconds": round(feature_s, 2), "fit_seconds": round(time.perf_counter() - t, 2),
            "examples": {s: int(len(v)) for s, v in y.items()}, "dim": int(x["train"].shape[1])}
