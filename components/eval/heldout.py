"""Per-stage diagnostics on every domain's held-out blocks: MLM loss and the anchor-vector R^2.

Held-out MLM loss (the cheap forgetting signal): mean cross-entropy at masked positions, with
the same masks at every stage (fixed generator), so rows of the stage x domain matrix compare.

Anchor-vector R^2 (Wu, Lee & Ge, NeurIPS 2023; docs/methods.md): with logits z = W u + b at a
masked position (u = the decoder's input), the "bulk" log partition function

    log Z_bulk^k(u) = log sum_{v not in top-k(z)} exp(z_v)

is regressed linearly on u (ridge, fitted on 80% of positions); the score is the held-out
R^2 = 1 - SS_res / SS_tot on the other 20%. R^2 near 1 means one anchor vector explains the
bulk of the distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from components.data.masking import MlmMasker
from components.models.masked_lm import MaskedLM
from components.models.precision import autocast_for


def ridge_r2(x: np.ndarray, y: np.ndarray, train_fraction: float = 0.8, alpha: float = 1e-3, seed: int = 0) -> float:
    """Held-out R^2 of a ridge fit y ~ x w + c (features standardised)."""
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    cut = int(train_fraction * n)
    tr, te = order[:cut], order[cut:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = (x - mu) / sd
    a = np.c_[xs[tr], np.ones(len(tr))]
    w = np.linalg.solve(a.T @ a + alpha * len(tr) * np.eye(a.shape[1]), a.T @ y[tr])
    pred = np.c_[xs[te], np.ones(len(te))] @ w
    ss_tot = float(((y[te] - y[te].mean()) ** 2).sum())
    return 1.0 - float(((y[te] - pred) ** 2).sum()) / max(ss_tot, 1e-12)


def bulk_log_partition(logits: torch.Tensor, k: int) -> torch.Tensor:
    """log sum of exp(logits) over all but the top-k entries of each row."""
    top = logits.topk(k, dim=-1).indices
    rest = logits.scatter(-1, top, float("-inf"))
    return rest.logsumexp(-1)


@torch.no_grad()
def heldout_diagnostics(
    model: MaskedLM,
    blocks: np.ndarray,
    masker: MlmMasker,
    pad_id: int,
    ks: list[int],
    max_positions: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """{"mlm_loss": ..., "anchor_r2@k": ...} on `blocks` (masks fixed by seed 0)."""
    model.eval().to(device)
    decoder = model.hf.get_output_embeddings()
    captured: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    gen = torch.Generator().manual_seed(0)
    loss_sum, count = 0.0, 0
    feats, logzs = [], {k: [] for k in ks}
    try:
        for s in range(0, len(blocks), batch_size):
            ids = torch.from_numpy(blocks[s:s + batch_size].astype(np.int64))
            masked, labels = masker(ids, gen)
            attention = (ids != pad_id).long()
            picked = labels.to(device) != -100
            captured.clear()
            with autocast_for(device, precision):
                hidden = model.encode(model.embed(masked.to(device)), attention.to(device))
                logits = model.mlm_logits(hidden[picked]).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels.to(device)[picked], reduction="sum"))
            count += int(picked.sum())
            if sum(len(f) for f in feats) < max_positions:
                feats.append(captured[-1].float().cpu())
                for k in ks:
                    logzs[k].append(bulk_log_partition(logits, k).cpu())
    finally:
        hook.remove()
    out = {"mlm_loss": loss_sum / max(count, 1)}
    x = torch.cat(feats).numpy()[:max_positions]
    for k in ks:
        out[f"anchor_r2@{k}"] = ridge_r2(x, torch.cat(logzs[k]).numpy()[:max_positions])
    return out
