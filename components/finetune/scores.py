"""Classification scores of one prediction set.

    accuracy = (1/n) sum_i [pred_i == gold_i]
    macro-F1 = (1/|C|) sum_{c in C} 2 P_c R_c / (P_c + R_c)   (0 when P_c + R_c = 0)
with C the classes that occur in gold or predictions (scikit-learn's default label set).
"""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    classes = np.union1d(pred, gold)
    f1s = []
    for c in classes:
        tp = float(((pred == c) & (gold == c)).sum())
        p = tp / max(float((pred == c).sum()), 1.0)
        r = tp / max(float((gold == c).sum()), 1.0)
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(f1s)) if f1s else 0.0
