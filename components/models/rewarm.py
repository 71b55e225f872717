"""Stage 0 as an MLM-competent model: a whole-model MLM re-warm on general text.

Sentence-embedding checkpoints such as all-MiniLM-L6-v2 lost their MLM ability in their
contrastive training; a head trained on the frozen encoder cannot bring it back (head-only
warm-up: held-out loss ~7). The re-warm trains every parameter:

    min over theta of  L_MLM(theta; masked general-text blocks)
    AdamW, lr_encoder (`lr`) and lr_head (`head_lr`), linear warm-up then constant

evaluating the held-out loss and top-1 (fixed masks) every `eval_every` steps and stopping when
it has not improved by a relative `min_delta` for `patience` evaluations (a plateau), or at
`max_steps`. The result is stored in bf16 (it ships in the repository for the default model,
~45 MB) and always used as bf16-rounded weights cast to fp32, so a shipped copy and a fresh
re-warm are the same model. The recipe key hashes the base weights, the settings and the corpus;
a shipped copy is used only under the same key and after its sha256 is checked.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.config import RewarmConfig
from components.data.masking import MlmMasker
from components.errors import InputError
from components.io import sha256_file as file_sha256
from components.models.masked_lm import IGNORE, MaskedLM

RECIPE = "recipe.json"
WEIGHTS = "model.safetensors"


def recipe_key(base_fingerprint: str, cfg: RewarmConfig, corpus_sha256: str) -> str:
    """What determines the re-warmed weights (not where files live)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("corpus", "shipped_dir")}
    material = {"base": base_fingerprint, "settings": settings, "corpus": corpus_sha256, "v": 1}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def heldout_mlm(model: MaskedLM, blocks: np.ndarray, masker: MlmMasker, pad_id: int,
                batch_size: int = 32) -> dict[str, float]:
    """Mean MLM cross-entropy and top-1 accuracy at masked positions, masks fixed by seed 0."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    loss, correct, count = 0.0, 0, 0
    for s in range(0, len(blocks), batch_size):
        ids = torch.from_numpy(blocks[s:s + batch_size].astype(np.int64))
        masked, labels = masker(ids, gen)
        hidden = model.encode(model.embed(masked), (ids != pad_id).long())
        picked = labels != IGNORE
        logits = model.mlm_logits(hidden[picked]).float()
        loss += float(torch.nn.functional.cross_entropy(logits, labels[picked], reduction="sum"))
        correct += int((logits.argmax(-1) == labels[picked]).sum())
        count += int(picked.sum())
    model.train(was_training)
    return {"mlm_loss": loss / max(count, 1), "top1": correct / max(count, 1)}


def bf16_round(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors rounded to bf16 and back to fp32 (the stored precision)."""
    return {k: (v.to(torch.bfloat16).float() if v.is_floating_point() else v) for k, v in state.items()}


def _plateaued(history: list[dict], patience: int, min_delta: float) -> bool:
    """No evaluation in the last `patience` improved on the best before them by > min_delta (relative)."""
    if len(history) <= patience:
        return False
    best_before = min(h["mlm_loss"] for h in history[:-patience])
    return min(h["mlm_loss"] for h in history[-patience:]) > best_before * (1 - min_delta)


def rewarm(mlm: MaskedLM, train: np.ndarray, heldout: np.ndarray, masker: MlmMasker, pad_id: int,
           cfg: RewarmConfig, log: Callable[[str], None] = print) -> dict:
    """Train `mlm` in place; return {"history": [...], "steps": n, "stopped": "plateau" | "max_steps"}."""
    torch.manual_seed(cfg.seed)
    head_ids = {id(p) for p in mlm.head.parameters()} - {id(mlm.hf.get_input_embeddings().weight)}
    groups = [{"params": [p for p in mlm.parameters() if id(p) not in head_ids], "lr": cfg.lr},
              {"params": [p for p in mlm.parameters() if id(p) in head_ids], "lr": cfg.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_blocks = heldout[:cfg.eval_blocks]
    history = [{"step": 0, **heldout_mlm(mlm, eval_blocks, masker, pad_id)}]
    log(f"re-warm: step 0/{cfg.max_steps} held-out loss {history[0]['mlm_loss']:.3f} top-1 {history[0]['top1']:.3f}")
    mlm.train()
    t0, stopped, step = time.perf_counter(), "max_steps", 0
    for step in range(1, cfg.max_steps + 1):
        ids = torch.from_numpy(train[rng.integers(0, len(train), cfg.batch_size)].astype(np.int64))
        masked, labels = masker(ids, gen)
        loss = mlm.mlm_loss(mlm.encode(mlm.embed(masked), (ids != pad_id).long()), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            history.append({"step": step, "train_loss": float(loss.detach()), **heldout_mlm(mlm, eval_blocks, masker, pad_id)})
            rate = (time.perf_counter() - t0) / step
            log(f"re-warm: step {step}/{cfg.max_steps} held-out loss {history[-1]['mlm_loss']:.3f} "
                f"top-1 {history[-1]['top1']:.3f} ({rate:.2f} s/step, ETA {rate * (cfg.max_steps - step) / 60:.0f} min "
                f"at most)")
            if _plateaued(history, cfg.patience, cfg.min_delta):
                stopped = "plateau"
                break
    return {"history": history, "steps": step, "stopped": stopped, "seconds": round(time.perf_counter() - t0, 1)}


def find_shipped(shipped_dir: Path, key: str) -> Path | None:
    """The shipped directory whose recipe has `key`, its weights' sha256 checked (InputError if not)."""
    if not shipped_dir.is_dir():
        return None
    for recipe_path in sorted(shipped_dir.glob(f"*/{RECIPE}")):
        recipe = json.loads(recipe_path.read_text())
        if recipe.get("key") != key:
            continue
        weights = recipe_path.parent / WEIGHTS
        if not weights.is_file():
            raise InputError(f"shipped stage-0 weights {weights}: file missing (git lfs or a partial checkout?)")
        found = file_sha256(weights)
        if found != recipe["sha256"]:
            raise InputError(f"shipped stage-0 weights {weights}: sha256 {found[:12]}... does not match "
                             f"its recipe ({recipe['sha256'][:12]}...): the file is corrupt or was replaced")
        return recipe_path.parent
    return None


def save_rewarmed(state: dict[str, torch.Tensor], out: Path, recipe: dict) -> dict:
    """Write bf16 weights + recipe (with the weights' sha256) into `out`; return the recipe."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(out / WEIGHTS))
    recipe = {**recipe, "sha256": file_sha256(out / WEIGHTS)}
    (out / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


def load_rewarmed(directory: Path) -> dict[str, torch.Tensor]:
    """The re-warmed state dict as fp32 (bf16-rounded values)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(directory / WEIGHTS)).items()}
