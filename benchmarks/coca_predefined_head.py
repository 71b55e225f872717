"""CoCa's pre-defined head, zero-shot: how informative is the target CoCa calibrates towards?

CoCa's consistency term pulls the task head's distribution towards the pre-defined head's,
p_pre(y|x) = softmax_y(MLM-head logits at the template's mask slot, restricted to one verbalizer
token per class) (docs/methods.md). If p_pre predicts the same class for every input, that pull
is towards a constant (until CoCa's alpha term has trained the head). For each checkpoint (a stage's `model.safetensors` in a run dir) and each
task of the config, prints the pre-defined head's zero-shot dev accuracy, the dev majority rate
and how its argmax predictions spread over the classes, on the first `finetune.max_eval_examples`
dev examples (no training).

    python benchmarks/coca_predefined_head.py --config pipelines/configs/default.yaml \\
        --checkpoint RUN/stages/00-base/model.safetensors --checkpoint RUN/stages/03-tweet/model.safetensors
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from components.cli import add_config_args, run_main  # noqa: E402
from components.config import load_config  # noqa: E402
from components.data.domains import read_task, resolve_domain  # noqa: E402
from components.data.task_encoding import default_template, encode_task  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.finetune.coca import coca_of  # noqa: E402
from components.methods.registry import build_task_model  # noqa: E402
from components.models.loading import load_tokenizer  # noqa: E402
from components.models.task_model import TaskBatch, TaskInfo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", action="append", type=Path, required=True, help="a stage's model.safetensors")
    args = parser.parse_args()
    if not args.config:
        raise InputError("no config given: pass --config FILE (e.g. pipelines/configs/default.yaml)")
    missing = [str(p) for p in args.checkpoint if not p.is_file()]
    if missing:
        raise InputError(f"--checkpoint: no such file {missing}")
    cfg = load_config(args.config, [*args.overrides, "finetune.coca.enabled=true", "finetune.repcali.enabled=false"])
    tokenizer = load_tokenizer(cfg.model.name)
    for ckpt in args.checkpoint:
        try:
            weights = load_file(ckpt)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise InputError(f"--checkpoint: {ckpt} is not a readable safetensors file ({err})") from None
        print(f"== {ckpt}")
        for d in cfg.domains:
            domain = resolve_domain(d)
            dev = read_task(domain, "dev")
            info = TaskInfo(d.name, dev.label_names, domain.verbalizers)
            enc = encode_task(dev, tokenizer, cfg.finetune.max_length, default_template(tokenizer, dev.texts_b is not None))
            n = min(len(enc["labels"]), cfg.finetune.max_eval_examples or len(enc["labels"]))
            enc = {k: v[:n] for k, v in enc.items()}
            model, _, _ = build_task_model(cfg, weights, info, tokenizer)
            with torch.no_grad():
                out = model.eval()(TaskBatch(enc["input_ids"], enc["attention_mask"], enc["labels"],
                                             enc.get("token_type_ids"), enc.get("mask_pos")))
                pred = coca_of(model).predefined_logits(model, out).argmax(-1)
            y = enc["labels"]
            spread = collections.Counter(info.label_names[i] for i in pred.tolist())
            print(f"{d.name:>12}: zero-shot acc {float((pred == y).float().mean()):.3f}, dev majority "
                  f"{float(torch.bincount(y).max()) / n:.3f} (n={n}); predicted {dict(spread.most_common())}")


if __name__ == "__main__":
    run_main(main)
