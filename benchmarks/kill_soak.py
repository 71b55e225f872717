"""Kill soak: SIGKILL the pipeline's driver at random moments, rerun the same command until it
finishes, then compare its results with an uninterrupted run of the same config.

    nice -n 10 python benchmarks/kill_soak.py --out /tmp/soak --min-kills 10 --seed 0

1. An uninterrupted run of a small config (2 domains, tiny budgets) in OUT/clean.
2. The same command on OUT/soak, started again and again: each attempt's driver is killed
   (SIGKILL to its process group: the driver and the local Ray it started, as a machine crash
   would) a random 0-1.5 s after its j-th progress line (j uniform in 1..3; progress
   lines are pre-training steps, finished stages, held-out diagnostics, cells, report writing),
   so the kills follow the run through its stages, cells and report. The first two times the
   report is being written, the attempt is killed there. Once `--min-kills` kills are done the
   run is left to finish.
3. anytime.json and every cell file of the two runs are compared, timing fields left out
   (wall_time_s); any difference is a mismatch (there must be none).

Prints and writes OUT/kill_soak.json: kills survived, the phase of each kill, mismatches, the
wall time of both runs and the time lost per kill ((soak wall - clean wall) / kills; each kill
costs a restart: interpreter, data checks, tokenizer, Ray start, plus the work since the last saved file).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "domains=[{name: laptop, path: data/laptop}, {name: acl, path: data/acl}]",
    "model.block_size=32", "model.head_warmup.steps=3", "data.max_corpus_docs=300",
    "pretrain.num_workers=1", "pretrain.cpus_per_worker=1", "pretrain.batch_size=8", "pretrain.max_steps=6",
    "pretrain.lr=5.0e-4", "pretrain.checkpoint_every=2", "pretrain.log_every=1", "pretrain.eval_blocks=8",
    "pretrain.end_stage_blocks=8", "finetune.epochs=1", "finetune.batch_size=8", "finetune.max_length=48",
    "finetune.max_train_examples=24", "finetune.max_eval_examples=32", "finetune.cpus_per_cell=1",
    "eval.anchor_positions=60", "tracking.wandb=disabled",
]
# A progress line (new work done) and the phase it tells the run is in.
PROGRESS = [(re.compile(r"^stage \d+ \(.*\): [\d,]+/[\d,]+ steps"), "pre-training"), (re.compile(r"^stage \d+ \(.*\): done"), "stage finished"),
            (re.compile(r"^stage \d+: held-out"), "diagnostics"), (re.compile(r"^row \d+ \(.*\): \d+/"), "cells"),
            (re.compile(r"^report: writing"), "report writing")]
VOLATILE = {"wall_time_s"}
RAY_START_TIMEOUT = "The current node timed out during startup"


def command(run_dir: Path, cache: Path) -> list[str]:
    cmd = [sys.executable, "-u", str(ROOT / "pipelines/continual.py"), "--config",
           str(ROOT / "pipelines/configs/default.yaml"), "--run-dir", str(run_dir)]
    for item in [*SMALL, f"data.cache_dir={cache}"]:
        cmd += ["--set", item]
    return cmd


ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(ROOT),
       "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True, cwd=ROOT)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver and the local Ray it started, as a crash would
    except ProcessLookupError:
        pass
    proc.wait()


def clean_run(run_dir: Path, cache: Path, log) -> float:
    t = time.time()
    output = [RAY_START_TIMEOUT]
    while any(RAY_START_TIMEOUT in line for line in output):   # an overloaded machine: start again
        proc = start(command(run_dir, cache))
        output = []
        for line in proc.stdout:
            output.append(line)
            log.write(line)
            log.flush()
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {proc.returncode}); see log_clean.txt")
    return time.time() - t


def soak(run_dir: Path, cache: Path, min_kills: int, rng: random.Random,
         log) -> tuple[list[dict], float, int, list[int]]:
    """Attempts until one finishes; returns the kills, the wall time, the attempts and those
    whose local Ray timed out starting (an overloaded machine; rerun like a kill)."""
    kills: list[dict] = []
    startup_failures: list[int] = []
    report_kills = 0
    t0 = time.time()
    attempts = 0
    while True:
        attempts += 1
        started = time.time()
        proc = start(command(run_dir, cache))
        target = rng.randint(1, 3) if len(kills) < min_kills else None
        seen, phase, deadline = 0, "startup", None
        lines: queue.Queue = queue.Queue()
        output: list[str] = []
        threading.Thread(target=lambda p=proc, q=lines: [q.put(x) for x in p.stdout], daemon=True).start()
        while proc.poll() is None or not lines.empty():
            try:
                line = lines.get(timeout=0.05).rstrip("\n")
            except queue.Empty:
                line = None
            if line is not None:
                output.append(line)
                log.write(line + "\n")
                log.flush()
                kind = next((k for pattern, k in PROGRESS if pattern.match(line)), None)
                if kind is not None and deadline is None:
                    phase, seen = kind, seen + 1
                    if kind == "report writing" and report_kills < 2 and len(kills) < min_kills + 2:
                        deadline = time.time() + rng.uniform(0.0, 0.5)
                    elif target is not None and seen >= target:
                        deadline = time.time() + rng.uniform(0.0, 1.5)
            if deadline is not None and time.time() >= deadline and proc.poll() is None:
                kill(proc)
                report_kills += phase == "report writing"
                kills.append({"attempt": attempts, "after": phase, "seconds_into_attempt": round(time.time() - started, 1)})
                print(f"kill {len(kills)}: {kills[-1]}", flush=True)
                break
        else:
            if proc.wait() != 0 and any(RAY_START_TIMEOUT in line for line in output):
                startup_failures.append(attempts)   # the machine, not the pipeline: try again
                print(f"attempt {attempts}: Ray did not start in time; again", flush=True)
                continue
            if proc.returncode != 0:
                raise SystemExit(f"attempt {attempts} failed on its own (exit {proc.returncode}); see log_soak.txt")
            return kills, time.time() - t0, attempts, startup_failures


def comparable(path: Path) -> object:
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(json.loads(path.read_text()))


def mismatches(clean: Path, soaked: Path) -> list[str]:
    out = []
    names = sorted({p.name for p in (clean / "cells").glob("*.json")} | {p.name for p in (soaked / "cells").glob("*.json")})
    for rel in ["anytime.json", *[f"cells/{n}" for n in names]]:
        a, b = clean / rel, soaked / rel
        if not (a.is_file() and b.is_file()) or comparable(a) != comparable(b):
            out.append(rel)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new directory for both runs, the log and the figures")
    parser.add_argument("--min-kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--cache", type=Path, help="data/model cache to reuse (default: a new one in OUT)")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists; give a new --out")
    out.mkdir(parents=True)
    cache = (args.cache or out / "cache").resolve()
    with open(out / "log_clean.txt", "w") as log:
        clean_wall = clean_run(out / "clean", cache, log)
    print(f"uninterrupted run: {clean_wall:.0f}s", flush=True)
    with open(out / "log_soak.txt", "w") as log:
        kills, soak_wall, attempts, startup_failures = soak(out / "soak", cache, args.min_kills, random.Random(args.seed), log)
    bad = mismatches(out / "clean", out / "soak")
    phases: dict[str, int] = {}
    for k in kills:
        phases[k["after"]] = phases.get(k["after"], 0) + 1
    result = {
        "kills_survived": len(kills), "attempts": attempts, "ray_startup_timeouts": len(startup_failures), "kills_by_phase": phases,
        "mismatches": len(bad), "mismatched_files": bad,
        "files_compared": 1 + len(list((out / "clean" / "cells").glob("*.json"))),
        "clean_wall_s": round(clean_wall, 1), "soak_wall_s": round(soak_wall, 1),
        "time_lost_per_kill_s": round((soak_wall - clean_wall) / max(1, len(kills)), 1),
        "kills": kills, "config_overrides": SMALL,
    }
    (out / "kill_soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("kills", "config_overrides")}, indent=2))
    return 0 if not bad and len(kills) >= args.min_kills else 1


if __name__ == "__main__":
    sys.exit(main())
