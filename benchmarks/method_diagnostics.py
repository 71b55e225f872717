"""Forward-pass diagnostics of HPrompt-CPT, CoCa and the expert teachers (issue #18: why they hurt).

Each probe runs a few forwards (and at most a few backwards) on one batch and returns plain
numbers; the CLI prints them as JSON lines. Every figure is a mean over the batch's examples.

HPrompt (`hprompt_probe`, a stage's plug-in state on the stage's model, a batch of blocks):
    prompt_to_token_norm   mean_slot ||P(q)_l|| / mean_token ||E(x)_t||       (prompt scale)
    cos_own_virtual        cos(h(x; P(q)), h(x; P(v)))   h = mean-pooled states; the first
                           stage's disagreement negative; the hinge is active where it > margin
    cos_own_prototype      cos(h(x; P(q)), h(x; P(c_k))) for each earlier prototype k
    cos_prompt_noprompt    cos(h(x; P(q)), h(x))          how much the prompt moves the states
    cos_to_stage0          cos(h(x; P(q)), h_0(x))        drift from the stage-0 model
    query_cos_masked_clean cos(q(x_masked), q(x_clean)), prompt_rel_diff_masked_clean
                           ||P(q_m) - P(q_c)|| / ||P(q_c)||   (the query's text view);
                           query_cos_visible_clean: the "visible" view (changed tokens out of
                           the attention mask) vs clean; query_cos_between_texts: mean
                           pairwise cos of clean queries of different blocks (the scale)
    neg_grad_share         ||dL_dis/dphi through the negative branch|| / ||dL_dis/dphi||, phi =
                           the hypernetwork (0 = earlier prompts are not moved by L_dis; above 1
                           when the two branches' gradients partly cancel)

CoCa (`coca_probe`, a TaskModel and a templated batch; eval mode, so dropout does not mask
the perturbation's effect):
    token_norm / example_norm   mean ||E(x)_t|| over tokens, mean ||E(x)_i||_F over examples
    delta_to_example_norm       ||delta*_i||_F / ||E(x)_i||_F   (the perturbation's relative size)
    D_clean, D_noise, D_adv     D at delta = 0, at a random delta of radius epsilon, at the
                                ascent's delta*; adv_gain = D_adv - D_clean
    pre_majority, pre_entropy   share of the batch in the pre-defined head's top class; mean
                                entropy / log C of p_pre (1 = uniform)
    grad_task, grad_predefined, grad_consistency   L2 norms of each term's parameter gradient
    task_share_of_total         ||g_task|| / ||g_task + g_predefined + g_consistency||
    clip_factor                 min(1, clip / ||g_total||): the factor clipping applies to every term
    cos_task_consistency        cos(g_task, g_consistency)

Experts (`expert_view_probe`, a TaskModel with pooling "mask", e.g. an expert under `full`):
the task texts in the template it is fine-tuned on ("<text> It was [MASK].") vs the plain text
with its last content token masked (what the distillation cache feeds it):
    slot_cos_same_text      cos(e_template(x), e_cache(x)), e = the slot's hidden state
    slot_cos_between_texts  mean cos(e_template(x), e_template(x')) over pairs x != x'
                            (the spread of the states the task head was trained on)
    agreement, majority_*   argmax agreement of the two views, each view's majority share

    python benchmarks/method_diagnostics.py coca --run-dir RUN --stage 1 --task acl
    python benchmarks/method_diagnostics.py hprompt --run-dir RUN --stage 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from components.finetune.coca import Coca, adversarial_delta, head_divergence, project  # noqa: E402
from components.finetune.loop import task_loss  # noqa: E402
from components.models.task_model import TaskBatch, TaskModel  # noqa: E402
from components.models.masked_lm import MaskedLM, mean_pool  # noqa: E402
from components.pretrain.expert_kd import mask_last_content  # noqa: E402
from components.pretrain.hprompt import HPromptPlugin  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def _distribution(logits: torch.Tensor) -> dict[str, float]:
    """Majority share of the argmax and mean normalised entropy of softmax(logits) [B, C]."""
    p = logits.float().softmax(-1)
    counts = torch.bincount(p.argmax(-1), minlength=p.shape[-1])
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])
    return {"majority": float(counts.max()) / p.shape[0], "entropy": float(ent.mean())}


# ----------------------------------------------------------------------------- HPrompt


@torch.no_grad()
def _pooled(model: MaskedLM, ids: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    return mean_pool(model.encode(model.embed(ids), mask, prefix).float(), mask)


def hprompt_probe(plugin: HPromptPlugin, model: MaskedLM, masked_ids: torch.Tensor, clean_ids: torch.Tensor,
                  attention_mask: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """The HPrompt figures of the module docstring on one batch (model and plug-in in eval mode)."""
    plugin.eval()
    model.eval()
    torch.manual_seed(seed)
    ids, mask = masked_ids, attention_mask
    gen, mem = plugin.generator, plugin.memory
    with torch.no_grad():
        q_m, h0_tokens = gen.encoder(ids, mask)
        q_c, _ = gen.encoder(clean_ids, mask)
        q_v, _ = gen.encoder(ids, mask * (ids == clean_ids).to(mask.dtype))  # "visible": changed tokens hidden
        p_own, p_clean = gen.hypernet(q_m), gen.hypernet(q_c)
        v = mem.virtual_queries(ids.shape[0], plugin.cfg.noise_scale)
        tok = model.embed(ids).float().norm(dim=-1)
        out = {
            "prompt_to_token_norm": float(p_own.float().norm(dim=-1).mean() / tok[mask.bool()].mean()),
            "query_cos_masked_clean": _cos(q_m, q_c),
            "query_cos_visible_clean": _cos(q_v, q_c),
            "query_cos_between_texts": float(((F.normalize(q_c, dim=-1) @ F.normalize(q_c, dim=-1).T).sum()
                                              - q_c.shape[0]) / max(q_c.shape[0] * (q_c.shape[0] - 1), 1)),
            "prompt_rel_diff_masked_clean": float((p_own - p_clean).flatten(1).norm(dim=1).mean()
                                                  / p_clean.flatten(1).norm(dim=1).mean()),
        }
    own = _pooled(model, ids, mask, p_own)
    out["cos_own_virtual"] = _cos(own, _pooled(model, ids, mask, gen.hypernet(v)))
    out["cos_prompt_noprompt"] = _cos(own, _pooled(model, ids, mask, None))
    out["cos_to_stage0"] = _cos(own, mean_pool(h0_tokens.float(), mask))
    for k, name in enumerate(mem.names):
        proto = gen.hypernet(mem.prototypes[k:k + 1]).expand(ids.shape[0], -1, -1)
        out[f"cos_own_prototype[{name}]"] = _cos(own, _pooled(model, ids, mask, proto))
    if mem.names:  # which share of L_dis's hypernetwork gradient flows through the prototype prompt?
        params = [p for p in gen.hypernet.parameters()]
        proto = gen.hypernet(mem.prototypes[:1]).expand(ids.shape[0], -1, -1)
        own_h = mean_pool(model.encode(model.embed(ids), mask, gen.hypernet(q_m)), mask)
        neg_h = mean_pool(model.encode(model.embed(ids), mask, proto), mask)
        loss = F.relu(F.cosine_similarity(own_h, neg_h, dim=-1) - plugin.cfg.margin).mean()
        g_all = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g_neg = torch.autograd.grad(F.relu(F.cosine_similarity(own_h.detach(), neg_h, dim=-1)
                                           - plugin.cfg.margin).mean(), params, allow_unused=True)
        norm = lambda gs: math.sqrt(sum(float(g.pow(2).sum()) for g in gs if g is not None))  # noqa: E731
        out["neg_grad_share"] = norm(g_neg) / max(norm(g_all), 1e-30)
    return out


# ----------------------------------------------------------------------------- CoCa


def _grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])


def coca_probe(model: TaskModel, plugin: Coca, batch: TaskBatch, clip: float = 1.0, seed: int = 0) -> dict[str, float]:
    """The CoCa figures of the module docstring on one templated batch."""
    cfg = plugin.cfg
    model.eval()
    torch.manual_seed(seed)
    mask = batch.attention_mask.unsqueeze(-1).float()
    with torch.no_grad():
        emb = model.mlm.embed(batch.input_ids).float() * mask
        out0 = model(batch)
        d_clean = head_divergence(model, out0, cfg.divergence)
        bound = cfg.epsilon * (emb.norm(dim=-1, keepdim=True) if cfg.radius == "per_token" else 1.0)
        noise = project(torch.randn_like(emb) * 1e3, mask, bound, cfg.radius)  # a random point on the ball's surface
        d_noise = head_divergence(model, model(batch, noise.to(emb.dtype)), cfg.divergence)
        pre = plugin.predefined_logits(model, out0)
    delta = adversarial_delta(model, batch, cfg.epsilon, cfg.steps, cfg.step_size, cfg.noise_std, cfg.divergence,
                              cfg.radius)
    with torch.no_grad():
        d_adv = head_divergence(model, model(batch, delta), cfg.divergence)
    example_norm = emb.flatten(1).norm(dim=1)
    tokens = emb.norm(dim=-1)[batch.attention_mask.bool()]
    res = {
        "token_norm": float(tokens.mean()), "example_norm": float(example_norm.mean()),
        "delta_to_example_norm": float((delta.float().flatten(1).norm(dim=1) / example_norm).mean()),
        "D_clean": float(d_clean.mean()), "D_noise": float(d_noise.mean()), "D_adv": float(d_adv.mean()),
        "adv_gain": float((d_adv - d_clean).mean()),
        "pre_majority": _distribution(pre)["majority"], "pre_entropy": _distribution(pre)["entropy"],
    }
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    out = model(batch)
    g_task = _grad(task_loss(out.logits, batch.labels, False), params)
    g_pre = _grad(cfg.alpha * F.cross_entropy(plugin.predefined_logits(model, out).float(), batch.labels), params)
    g_con = _grad(cfg.beta * head_divergence(model, model(batch, delta), cfg.divergence).mean(), params)
    total = (g_task + g_pre + g_con).norm()
    res.update({
        "grad_task": float(g_task.norm()), "grad_predefined": float(g_pre.norm()), "grad_consistency": float(g_con.norm()),
        "clip_factor": float(min(1.0, clip / float(total))),
        "task_share_of_total": float(g_task.norm() / total),
        "cos_task_consistency": float(F.cosine_similarity(g_task, g_con, dim=0)),
    })
    return res


# ----------------------------------------------------------------------------- experts


@torch.no_grad()
def expert_view_probe(expert: TaskModel, templated: TaskBatch, plain: TaskBatch, pad_id: int, mask_id: int) -> dict:
    """A pooling-"mask" model on its template vs on the plain text with the last content token
    masked (the distillation cache's input); the figures of the module docstring."""
    expert.eval()
    own = expert(templated)
    ids, slot = mask_last_content(plain.input_ids, pad_id, mask_id)
    cached = expert(TaskBatch(ids, plain.attention_mask, plain.labels, plain.token_type_ids, slot))
    a, b = F.normalize(own.raw_embedding.float(), dim=-1), F.normalize(cached.raw_embedding.float(), dim=-1)
    n = a.shape[0]
    between = (a @ a.T).sum() - n
    return {"slot_cos_same_text": float((a * b).sum(-1).mean()),
            "slot_cos_between_texts": float(between / max(n * (n - 1), 1)),
            "agreement": float((own.logits.argmax(-1) == cached.logits.argmax(-1)).float().mean()),
            "majority_template": _distribution(own.logits)["majority"],
            "majority_cache_view": _distribution(cached.logits)["majority"]}


# ----------------------------------------------------------------------------- CLI


def _stage_files(run_dir: Path, stage: int) -> tuple[dict, dict | None, dict | None]:
    """(model weights, plug-in state, plug-in meta list) of stage `stage` of a run directory."""
    from safetensors.torch import load_file

    from components.checkpoint import load_tree
    from components.errors import InputError

    found = sorted((run_dir / "stages").glob(f"{stage:02d}-*"))
    if not found or not (found[0] / "model.safetensors").is_file():
        raise InputError(f"--stage {stage}: no stage checkpoint {run_dir}/stages/{stage:02d}-*/model.safetensors")
    d = found[0]
    state = load_tree(d, "plugins") if (d / "plugins.safetensors").is_file() else None
    meta = json.loads((d / "meta.json").read_text()).get("plugin_meta") if (d / "meta.json").is_file() else None
    return load_file(str(d / "model.safetensors")), state, meta


def _hprompt_main(args, cfg) -> list[dict]:
    from components.data.corpus_cache import load_corpus_blocks
    from components.data.domains import resolve_domain
    from components.data.masking import MlmMasker
    from components.errors import InputError
    from components.models.loading import load_tokenizer, masked_lm_from_state

    weights, state, meta = _stage_files(args.run_dir, args.stage)
    base, _, _ = _stage_files(args.run_dir, 0)
    if state is None:
        raise InputError(f"--stage {args.stage}: no HPrompt plug-in state (was the run pre-trained with methods.hprompt?)")
    tok = load_tokenizer(cfg.model.name)
    model = MaskedLM(masked_lm_from_state(cfg.model.name, weights))
    plugin = HPromptPlugin(cfg.methods.hprompt, MaskedLM(masked_lm_from_state(cfg.model.name, base)), copy_base=False)
    plugin.load_stage_state(state, (meta or [{}])[0], prefix="0.")
    rows = []
    for name in ([args.domain] if args.domain else [d.name for d in cfg.domains]):
        index = [d.name for d in cfg.domains].index(name)
        blocks = load_corpus_blocks(resolve_domain(cfg.domains[index]), tok, cfg.model.block_size,
                                    cfg.data.cache_dir, cfg.data.heldout_fraction, cfg.data.max_corpus_docs,
                                    cfg.data.max_doc_chars).heldout[:args.examples]
        clean = torch.from_numpy(blocks.astype("int64"))
        masked, _ = MlmMasker.from_tokenizer(tok, cfg.data.mask_prob)(clean, torch.Generator().manual_seed(args.seed))
        rows.append({"probe": "hprompt", "stage": args.stage, "domain": name,
                     **hprompt_probe(plugin, model, masked, clean, (clean != tok.pad_token_id).long(), args.seed)})
    return rows


def _coca_main(args, cfg) -> list[dict]:
    from components.data.domains import read_task, resolve_domain
    from components.data.task_encoding import default_template, encode_task
    from components.errors import InputError
    from components.methods.registry import build_task_model
    from components.models.task_model import TaskInfo
    from components.models.loading import load_tokenizer

    names = [d.name for d in cfg.domains]
    if args.task not in names:
        raise InputError(f"--task {args.task!r}: the run's domains are {names}")
    weights, state, _ = _stage_files(args.run_dir, args.stage)
    base, _, _ = _stage_files(args.run_dir, 0)
    domain = resolve_domain(cfg.domains[names.index(args.task)])
    tok = load_tokenizer(cfg.model.name)
    train = read_task(domain, "train")
    enc = encode_task(train, tok, cfg.finetune.max_length, default_template(tok, train.texts_b is not None))
    rows = torch.from_numpy(__import__("numpy").random.default_rng(args.seed).permutation(len(train.labels))[:args.examples])
    length = int(enc["attention_mask"][rows].sum(1).max())
    batch = TaskBatch(enc["input_ids"][rows, :length], enc["attention_mask"][rows, :length], enc["labels"][rows],
                      enc["token_type_ids"][rows, :length] if "token_type_ids" in enc else None, enc["mask_pos"][rows])
    torch.manual_seed(args.seed)
    info = TaskInfo(args.task, train.label_names, domain.verbalizers)
    model, plugins, _ = build_task_model(cfg, weights, info, tok, base, state)
    coca = next(p for p in plugins if isinstance(p, Coca))
    return [{"probe": "coca", "stage": args.stage, "task": args.task, "radius": cfg.finetune.coca.radius,
             "epsilon": cfg.finetune.coca.epsilon, "divergence": cfg.finetune.coca.divergence,
             **coca_probe(model, coca, batch, seed=args.seed)}]


def _experts_main(args, cfg) -> list[dict]:
    """The stage's model as a pooling-"mask" TaskModel (fresh head: the slot states do not depend on it)."""
    from components.data.domains import read_task, resolve_domain
    from components.data.task_encoding import default_template, encode_task
    from components.errors import InputError
    from components.models.loading import load_tokenizer, masked_lm_from_state

    names = [d.name for d in cfg.domains]
    if args.task not in names:
        raise InputError(f"--task {args.task!r}: the run's domains are {names}")
    weights, _, _ = _stage_files(args.run_dir, args.stage)
    tok = load_tokenizer(cfg.model.name)
    train = read_task(resolve_domain(cfg.domains[names.index(args.task)]), "train")
    views = {}
    for name, template in (("templated", default_template(tok, train.texts_b is not None)), ("plain", None)):
        enc = encode_task(train, tok, cfg.finetune.max_length, template)
        views[name] = TaskBatch(enc["input_ids"][:args.examples], enc["attention_mask"][:args.examples],
                                enc["labels"][:args.examples], None, enc.get("mask_pos", torch.zeros(0))[:args.examples])
    torch.manual_seed(args.seed)
    model = TaskModel(MaskedLM(masked_lm_from_state(cfg.model.name, weights)), len(train.label_names or [0]), "mask")
    return [{"probe": "experts", "stage": args.stage, "task": args.task,
             **expert_view_probe(model, views["templated"], views["plain"], tok.pad_token_id, tok.mask_token_id)}]


def main(argv: list[str] | None = None) -> None:
    from components.config import load_config
    from components.errors import InputError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["hprompt", "coca", "experts"])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run directory (config.yaml, stages/)")
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--task", help="coca / experts: the task whose train examples form the batch")
    parser.add_argument("--domain", help="hprompt: one domain's held-out blocks (default: every domain)")
    parser.add_argument("--examples", type=int, default=32, help="batch size of the probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE on the run's config")
    args = parser.parse_args(argv)
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise InputError(f"--run-dir {args.run_dir}: no config.yaml (not a run directory)")
    overrides = list(args.overrides) + (["finetune.coca.enabled=true"] if args.probe == "coca" else [])
    cfg = load_config([config], overrides)
    if args.probe in ("coca", "experts") and not args.task:
        raise InputError(f"{args.probe}: --task is required")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    probe = {"hprompt": _hprompt_main, "coca": _coca_main, "experts": _experts_main}[args.probe]
    for row in probe(args, cfg):
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    from components.cli import run_main

    run_main(main)
