"""Make (or check) the re-warmed stage-0 model and measure it against the head-only warm-up.

    python pipelines/rewarm.py --config pipelines/configs/default.yaml --out data/stage0/minilm-l6-rewarm

Runs the whole-model MLM re-warm of `model.rewarm` (components/models/rewarm.py) unless the
cache already holds it, copies the bf16 weights + recipe to `--out` (what ships in the repo),
then scores both stage-0 candidates, the head-only warm-up (`model.head_warmup`) and the re-warm,
on held-out blocks of the general corpus and of every configured domain: MLM loss and top-1 at
masked positions (15%, fixed masks). Prints a table and writes `<out>/comparison.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from components.cli import add_config_args, config_from_args  # noqa: E402
from components.data.corpus_cache import load_corpus_blocks  # noqa: E402
from components.data.domains import resolve_domain  # noqa: E402
from components.data.masking import MlmMasker  # noqa: E402
from components.run.cells import CellSpec, run_cell, run_probe_row  # noqa: E402
from components.models.head_warmup import general_corpus, prepare_base_model  # noqa: E402
from components.models.loading import load_tokenizer, masked_lm_from_state  # noqa: E402
from components.models.masked_lm import MaskedLM  # noqa: E402
from components.models.rewarm import RECIPE, WEIGHTS, heldout_mlm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="directory for the shipped weights + recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-blocks", type=int, default=256, help="held-out blocks scored per corpus")
    parser.add_argument("--scores", action="store_true",
                        help="also the base row: linear probe and one fine-tuning cell per task for both candidates")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(args.threads)
    cache = Path(cfg.data.cache_dir)
    tokenizer = load_tokenizer(cfg.model.name)
    t0 = time.time()
    # the re-warm itself, never from a shipped copy: point the shipped lookup at nothing
    model_cfg = replace(cfg.model, stage0="rewarm", rewarm=replace(cfg.model.rewarm, shipped_dir=str(args.out / ".none")))
    path, info = prepare_base_model(model_cfg, tokenizer, cache, cfg.seed)
    source = path.parent / "rewarm"
    if not (source / RECIPE).is_file():
        raise SystemExit(f"{path.parent}: no rewarm/ recipe in the cache entry")
    recipe = json.loads((source / RECIPE).read_text())
    recipe["command"] = "python pipelines/rewarm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    recipe["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / WEIGHTS, args.out / WEIGHTS)
    (args.out / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")
    print(f"re-warm: {recipe['steps']} steps, stopped by {recipe['stopped']}; weights in {args.out} "
          f"(sha256 {recipe['sha256'][:12]}...)", flush=True)

    head_path, head_info = prepare_base_model(replace(cfg.model, stage0="head_warmup"), tokenizer, cache, cfg.seed)
    models = {"head warm-up": head_path, "re-warm": path}
    masker = MlmMasker.from_tokenizer(tokenizer)
    corpora = {"general": general_corpus(cfg.model.rewarm.corpus)}
    corpora.update({d.name: resolve_domain(d) for d in cfg.domains})
    blocks = {n: load_corpus_blocks(d, tokenizer, cfg.model.rewarm.block_size, cache,
                                    heldout_fraction=0.05 if n == "general" else cfg.data.heldout_fraction,
                                    max_docs=None if n == "general" else cfg.data.max_corpus_docs).heldout[:args.eval_blocks]
              for n, d in corpora.items()}
    scores: dict[str, dict] = {}
    for label, p in models.items():
        mlm = MaskedLM(masked_lm_from_state(cfg.model.name, load_file(str(p))))
        scores[label] = {n: heldout_mlm(mlm, b, masker, tokenizer.pad_token_id) for n, b in blocks.items()}
    print("held-out MLM loss / top-1 (15% masked, fixed masks):")
    print("| stage 0 | " + " | ".join(blocks) + " |")
    print("|---|" + "---|" * len(blocks))
    for label, row in scores.items():
        print(f"| {label} | " + " | ".join(f"{v['mlm_loss']:.3f} / {v['top1']:.3f}" for v in row.values()) + " |")
    rows: dict[str, dict] = {}
    if args.scores:
        for label, p in models.items():
            weights = load_file(str(p))
            probes = {r["task"]: r for r in run_probe_row(cfg, 0, weights, None, None, label, args.threads)}
            cells = {d.name: run_cell(cfg, CellSpec(0, d.name, cfg.seed, label), weights, None, None, args.threads)
                     for d in cfg.domains}
            rows[label] = {t: {"probe_accuracy": probes[t]["accuracy"], "probe_macro_f1": probes[t]["macro_f1"],
                               "accuracy": cells[t]["accuracy"], "macro_f1": cells[t]["macro_f1"]} for t in cells}
        print(f"base row (seed {cfg.seed}): probe accuracy / fine-tuning accuracy")
        print("| stage 0 | " + " | ".join(d.name for d in cfg.domains) + " |")
        print("|---|" + "---|" * len(cfg.domains))
        for label, row in rows.items():
            print(f"| {label} | " + " | ".join(f"{v['probe_accuracy']:.3f} / {v['accuracy']:.3f}" for v in row.values())
                  + " |")
    comparison = {"scores": scores, "base_row": rows, "seed": cfg.seed, "blocks": {n: int(len(b)) for n, b in blocks.items()},
                  "head_warmup": {k: head_info.get(k) for k in ("steps", "loss_first", "loss_last")},
                  "rewarm": {k: recipe[k] for k in ("steps", "stopped", "seconds", "key", "sha256")},
                  "wall_time_s": round(time.time() - t0, 1)}
    (args.out / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
