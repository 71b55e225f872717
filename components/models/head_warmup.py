"""Give a checkpoint without a trained MLM head a working one: a short head-only warm-up.

Sentence-embedding checkpoints such as all-MiniLM-L6-v2 ship only the encoder; their MLM head
(transform + LayerNorm + decoder bias; the decoder weight is tied to the input embeddings) is
freshly initialised. The warm-up trains only those untied head parameters with MLM on the
general-English set, the encoder frozen (its forward runs without gradients):

    min over head params of  L_MLM(head(encoder(x_masked)), x)

The result is cached by (weights fingerprint, warm-up settings, corpus fingerprint), so it
runs once per machine; the run's log and report say whether it ran.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from components.checkpoint import publish_dir, save_module, staging_dir
from components.config import DEFAULT_MODEL, ModelConfig
from components.data.corpus_cache import load_corpus_blocks
from components.data.domains import Domain
from components.data.masking import MlmMasker
from components.errors import InputError
from components.lock import locked
from components.models.loading import HEAD_PREFIXES, load_masked_lm
from components.models.masked_lm import MaskedLM
from components.models.rewarm import RECIPE, file_sha256, find_shipped, load_rewarmed, recipe_key, rewarm, save_rewarmed
from components.progress import Progress


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names and bytes (identical weights <=> identical fingerprint)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def general_corpus(path: str) -> Domain:
    return Domain(name="general", directory=None, corpus=Path(path), hf_dataset=None, hf_split="train",
                  text_column="text", train=None, dev=None, test=None, labels=None)


def _warm_up(mlm: MaskedLM, blocks: np.ndarray, masker: MlmMasker, pad_id: int, cfg: ModelConfig, seed: int) -> dict:
    tied = {id(mlm.hf.get_input_embeddings().weight)}
    params = [p for p in mlm.head.parameters() if id(p) not in tied]
    for p in mlm.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.head_warmup.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    mlm.train()
    losses = []
    progress = Progress("stage 0: MLM-head warm-up", cfg.head_warmup.steps, "steps")
    for step in range(cfg.head_warmup.steps):
        ids = torch.from_numpy(blocks[rng.integers(0, len(blocks), cfg.head_warmup.batch_size)].astype(np.int64))
        masked, labels = masker(ids, gen)
        with torch.no_grad():
            hidden = mlm.encode(mlm.embed(masked), (ids != pad_id).long())
        loss = mlm.mlm_loss(hidden, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.update(step + 1, f"loss {np.mean(losses[-20:]):.3f}")
    progress.close()
    for p in mlm.parameters():
        p.requires_grad_(True)
    k = max(1, len(losses) // 10)
    return {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:]))}


def stage0_mode(cfg: ModelConfig) -> str:
    """`rewarm` or `head_warmup` (`auto`: rewarm for the default model, head warm-up otherwise)."""
    if cfg.stage0 != "auto":
        return cfg.stage0
    return "rewarm" if cfg.name == DEFAULT_MODEL else "head_warmup"


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of tied tensors (the loader re-ties them)."""
    seen, out = set(), {}
    for k, v in state.items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v
    return out


def rewarmed_base(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, cache_dir: Path,
                  log=print) -> tuple[Path, dict]:
    """The re-warmed stage-0 model: from the cache, else the shipped copy, else trained now."""
    r = cfg.rewarm
    torch.manual_seed(r.seed)
    hf, head_is_fresh = load_masked_lm(cfg.name)
    own = {k: v for k, v in hf.state_dict().items() if not (head_is_fresh and k.startswith(HEAD_PREFIXES))}
    if not Path(r.corpus).is_file():
        raise InputError(f"model.rewarm.corpus: file not found: {r.corpus}")
    key = recipe_key(weights_fingerprint(own), r, file_sha256(Path(r.corpus)))
    final = cache_dir / "base_models" / f"rewarm-{key}"
    with locked(cache_dir / "base_models" / f".rewarm-{key}.lock", "base-model cache entry"):  # one creator at a time
        if (final / "info.json").is_file():
            return final / "model.safetensors", {**json.loads((final / "info.json").read_text()), "cache_hit": True}
        return _make_rewarmed(hf, own, key, cfg, tokenizer, cache_dir, final, log)


def _make_rewarmed(hf, own: dict, key: str, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, cache_dir: Path,
                   final: Path, log) -> tuple[Path, dict]:
    r = cfg.rewarm
    tmp = staging_dir(final)
    shipped = find_shipped(Path(r.shipped_dir), key)
    if shipped is not None:
        recipe = json.loads((shipped / RECIPE).read_text())
        hf.load_state_dict(load_rewarmed(shipped), strict=False)
        source = str(shipped)
    else:
        log(f"stage 0: re-warming {cfg.name} with MLM on {r.corpus} (whole model, up to {r.max_steps} steps; "
            f"no shipped weights with recipe key {key})")
        blocks = load_corpus_blocks(general_corpus(r.corpus), tokenizer, r.block_size, cache_dir, heldout_fraction=0.05)
        mlm = MaskedLM(hf)
        result = rewarm(mlm, blocks.train, blocks.heldout, MlmMasker.from_tokenizer(tokenizer),
                        tokenizer.pad_token_id, r, log)
        recipe = save_rewarmed(unique_tensors(hf.state_dict()), tmp / "rewarm", {
            "key": key, "model": cfg.name, "base_fingerprint": weights_fingerprint(own),
            "settings": {k: v for k, v in asdict(r).items() if k not in ("corpus", "shipped_dir")},
            "corpus_sha256": file_sha256(Path(r.corpus)), **result})
        hf.load_state_dict(load_rewarmed(tmp / "rewarm"), strict=False)
        source = "trained"
    hf.tie_weights()
    save_module(hf, tmp / "model.safetensors")
    info = {"model": cfg.name, "stage0": "rewarm", "head_warmup": False, "source": source, "key": key,
            "sha256": recipe["sha256"], "steps": recipe["steps"], "stopped": recipe["stopped"],
            "heldout_first": recipe["history"][0], "heldout_last": recipe["history"][-1]}
    (tmp / "info.json").write_text(json.dumps(info))
    publish_dir(tmp, final)
    return final / "model.safetensors", {**info, "cache_hit": False}


def prepare_base_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, cache_dir: Path, seed: int) -> tuple[Path, dict]:
    """Weights of the stage-0 model (with a working MLM head) as a safetensors file + what was done.

    `rewarm`: see `rewarmed_base` (seeded by `model.rewarm.seed`, the same for every run seed).
    `head_warmup`: seeded, the fresh head's initialisation and the warm-up are functions of `seed`."""
    if stage0_mode(cfg) == "rewarm":
        return rewarmed_base(cfg, tokenizer, cache_dir)
    torch.manual_seed(seed)
    hf, head_is_fresh = load_masked_lm(cfg.name)
    mode = cfg.head_warmup.mode
    warm = mode == "always" or (mode == "auto" and head_is_fresh)
    settings = {"weights": weights_fingerprint(hf.state_dict()), "warm": warm, "seed": seed, "block_size": cfg.block_size,
                **({"warmup": cfg.head_warmup.__dict__} if warm else {})}
    if warm:
        settings["corpus"] = hashlib.sha256(Path(cfg.head_warmup.corpus).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]
    final = cache_dir / "base_models" / key
    with locked(cache_dir / "base_models" / f".{key}.lock", "base-model cache entry"):  # one creator at a time
        if (final / "info.json").is_file():
            return final / "model.safetensors", {**json.loads((final / "info.json").read_text()), "cache_hit": True}
        return _make_base_model(hf, head_is_fresh, warm, cfg, tokenizer, cache_dir, seed, final)


def _make_base_model(hf, head_is_fresh: bool, warm: bool, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase,
                     cache_dir: Path, seed: int, final: Path) -> tuple[Path, dict]:
    info = {"model": cfg.name, "stage0": "head_warmup", "head_was_fresh": head_is_fresh, "head_warmup": warm}
    if warm:
        t = time.perf_counter()
        blocks = load_corpus_blocks(general_corpus(cfg.head_warmup.corpus), tokenizer, cfg.block_size,
                                    cache_dir, heldout_fraction=0.01).train
        mlm = MaskedLM(hf)
        info.update(_warm_up(mlm, blocks, MlmMasker.from_tokenizer(tokenizer), tokenizer.pad_token_id, cfg, seed))
        info.update({"steps": cfg.head_warmup.steps, "seconds": round(time.perf_counter() - t, 1)})
    tmp = staging_dir(final)
    save_module(hf, tmp / "model.safetensors")
    (tmp / "info.json").write_text(json.dumps(info))
    publish_dir(tmp, final)
    return final / "model.safetensors", {**info, "cache_hit": False}


