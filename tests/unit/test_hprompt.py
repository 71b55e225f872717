"""HPrompt-CPT: hypernetwork prompts, query encoder, agreement / disagreement terms, state."""

from __future__ import annotations

import copy
import json
import os
import tempfile

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components.checkpoint import load_tree, save_tree
from components.config import REPO_ROOT, HPromptConfig
from components.errors import InputError
from components.finetune.prompts import GeneratedPrompts
from components.models.hypernetwork import QueryEncoder, build_prompt_generator
from components.models.masked_lm import MaskedLM, mean_pool
from components.models.task_model import TaskBatch, TaskModel
from components.pretrain.hprompt import (
    HPromptPlugin,
    QueryMemory,
    agreement_loss,
    check_prompt_fits,
    disagreement_loss,
    usable_positions,
)
from components.pretrain.loop import MlmObjective
from tests.helpers.ddp import gloo_group, run_ddp
from tests.helpers.tiny import stage_info, tiny_hf_mlm

D, V, T, PAD = 32, 60, 12, 1


def tiny(kind: str = "bert", seed: int = 0) -> MaskedLM:
    return MaskedLM(tiny_hf_mlm(V, 64 if kind == "bert" else 66, kind, PAD, seed)).eval()


def batch(b: int = 4, seed: int = 0, pad_from: int | None = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, T), generator=g)
    mask = torch.ones(b, T, dtype=torch.long)
    if pad_from is not None:
        ids[1:, pad_from:] = PAD
        mask[1:, pad_from:] = 0
    labels = torch.full((b, T), -100)
    labels[:, 2] = ids[:, 2]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "block_index": torch.arange(b)}


def plugin_for(base: MaskedLM, **cfg) -> HPromptPlugin:
    return HPromptPlugin(HPromptConfig(enabled=True, prompt_length=4, rank=16, **cfg), base)


def step_terms(plugin: HPromptPlugin, model: MaskedLM, b: dict) -> tuple[torch.Tensor, dict]:
    ctx: dict = {}
    prefix = plugin.prefix(model, b, ctx)
    hidden = model.encode(model.embed(b["input_ids"]), b["attention_mask"], prefix)
    return hidden, plugin.loss_terms(model, b, hidden, ctx)


# ----------------------------------------------------------------------------- shapes, masks


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_prompt_shapes_and_padding_stays_masked(kind):
    model = tiny(kind)
    plugin = plugin_for(model).eval()
    b = batch()
    prompts = plugin.generator(b["input_ids"], b["attention_mask"])
    assert prompts.shape == (4, 4, D)
    hidden = model.encode(model.embed(b["input_ids"]), b["attention_mask"], prompts)
    assert hidden.shape == (4, T, D)
    # change a padded token: the real tokens' outputs (and the prompts) do not move
    ids2 = b["input_ids"].clone()
    ids2[1:, -1] = 7
    prompts2 = plugin.generator(ids2, b["attention_mask"])
    torch.testing.assert_close(prompts2, prompts, atol=1e-5, rtol=0)
    hidden2 = model.encode(model.embed(ids2), b["attention_mask"], prompts2)
    real = b["attention_mask"].bool()
    torch.testing.assert_close(hidden2[real], hidden[real], atol=1e-5, rtol=0)


def test_initial_prompts_are_small():
    model = tiny()
    plugin = plugin_for(model)
    prompts = plugin.generator(batch()["input_ids"], batch()["attention_mask"])
    word_std = float(model.backbone.get_input_embeddings().weight.detach().std())
    assert 0 < float(prompts.detach().std()) <= word_std


def test_prompt_fits_check_names_the_key():
    check_prompt_fits(120, 8, 128)
    with pytest.raises(InputError, match="methods.hprompt.prompt_length"):
        check_prompt_fits(128, 8, 128)
    assert usable_positions(tiny("bert")) == 64
    assert usable_positions(tiny("roberta")) == 64   # 66 minus the padding offset
    with pytest.raises(InputError, match="methods.hprompt.prompt_length"):
        HPromptPlugin(HPromptConfig(prompt_length=8), tiny("roberta"), block_size=60)


# ----------------------------------------------------------------------------- the query encoder


def test_query_encoder_is_frozen_hidden_and_a_copy():
    base = tiny()
    plugin = plugin_for(base)
    frozen = plugin.generator.encoder.model
    assert frozen is not base and not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())
    frozen_ids = {id(p) for p in frozen.parameters()}
    assert not frozen_ids & {id(p) for p in plugin.parameters()}
    assert all(k.startswith(("generator.hypernet.", "memory.")) for k in plugin.state_dict())
    # training the current model does not move the query encoder
    with torch.no_grad():
        base.hf.base_model.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(frozen.hf.base_model.embeddings.word_embeddings.weight,
                           base.hf.base_model.embeddings.word_embeddings.weight)
    plugin.train()
    assert not frozen.training
    plugin.to(torch.float64)  # .to() reaches the hidden frozen model
    assert next(frozen.parameters()).dtype == torch.float64
    plugin.to(torch.float32)
    # one forward gives query and teacher states
    b = batch()
    q, h = plugin.generator.encoder(b["input_ids"], b["attention_mask"])
    assert q.shape == (4, D) and h.shape == (4, T, D) and not q.requires_grad
    torch.testing.assert_close(q, mean_pool(h, b["attention_mask"]))


# ----------------------------------------------------------------------------- agreement


def test_agreement_zero_for_stage0_model_without_prompt_slots_positive_otherwise():
    base = tiny()
    current = copy.deepcopy(base).eval()
    b = batch()
    teacher = base.encode(base.embed(b["input_ids"]), b["attention_mask"])
    empty = torch.zeros(4, 0, D)  # "zero prompts" in the only sense that leaves a model unchanged
    same = current.encode(current.embed(b["input_ids"]), b["attention_mask"], empty)
    assert float(agreement_loss(same, teacher, b["attention_mask"]).detach()) < 1e-10

    # the plug-in path: current == stage 0, a hypernetwork that emits no prompt slots
    plugin = HPromptPlugin(HPromptConfig(prompt_length=0, rank=8, lambda_dis=0.0), base).eval()
    _, terms = step_terms(plugin, current, b)
    assert float(terms["agree"].detach()) < 1e-10

    # zero-VALUED prompt vectors still occupy positions and are attended to: > 0 (this is
    # what L_agree trains away); so does a current model that moved away from stage 0
    zeros = torch.zeros(4, 4, D)
    shifted = current.encode(current.embed(b["input_ids"]), b["attention_mask"], zeros)
    assert float(agreement_loss(shifted, teacher, b["attention_mask"]).detach()) > 1e-4
    with torch.no_grad():
        for prm in current.hf.base_model.encoder.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    _, terms = step_terms(plugin, current, b)
    assert float(terms["agree"].detach()) > 1e-4
    # padding positions do not count
    noisy = same.clone()
    noisy[~b["attention_mask"].bool()] += 5.0
    assert float(agreement_loss(noisy, teacher, b["attention_mask"]).detach()) < 1e-10


# ----------------------------------------------------------------------------- disagreement


def test_disagreement_hinge():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    orth = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    close = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # cos 0.71, 0.32
    assert float(disagreement_loss(a, orth, 0.5)) == 0.0
    assert float(disagreement_loss(a[1:], close[1:], 0.5)) == 0.0  # cos 0.32 < margin
    assert abs(float(disagreement_loss(a, a * 3, 0.5)) - 0.5) < 1e-6
    assert abs(float(disagreement_loss(a[:1], close[:1], 0.5)) - (2 ** -0.5 - 0.5)) < 1e-6


def test_disagreement_positive_when_prototype_prompt_is_the_own_prompt():
    base = tiny()
    model = copy.deepcopy(base)
    plugin = plugin_for(base, lambda_agree=0.0, lambda_dis=0.1, margin=0.5).eval()
    one = batch(1, pad_from=None)
    b = {k: v.expand(3, *v.shape[1:]).clone() for k, v in one.items()}  # three identical rows
    q, _ = plugin.generator.encoder(b["input_ids"], b["attention_mask"])
    plugin.memory.add_prototype("a", q[0])
    plugin.begin_stage(stage_info(2, "b"), model)
    _, terms = step_terms(plugin, model, b)
    assert abs(float(terms["disagree"].detach()) - 0.1 * (1 - 0.5)) < 1e-4
    assert float(terms["agree"].detach()) == 0.0


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("with_prototype", [False, True])
@pytest.mark.parametrize("term", ["agree", "disagree"])
def test_each_term_reaches_the_hypernetwork(term, with_prototype):
    base = tiny()
    model = copy.deepcopy(base).train()
    # margin -1: the hinge is active; without a prototype only the virtual negative gives L_dis one
    plugin = plugin_for(base, margin=-1.0, virtual_negative=not with_prototype).train()
    if with_prototype:
        plugin.memory.add_prototype("a", torch.randn(D))
        plugin.begin_stage(stage_info(2, "b"), model)
    else:
        plugin.begin_stage(stage_info(1, "a"), model)
    _, terms = step_terms(plugin, model, batch())
    assert terms[term].requires_grad and float(terms[term].detach()) > 0
    terms[term].backward()
    grads = [p.grad for p in plugin.generator.hypernet.parameters()]
    assert all(g is not None for g in grads)
    assert float(plugin.generator.hypernet.up.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in plugin.generator.encoder.model.parameters())


def test_zero_lambdas_give_exact_zero_terms_and_no_extra_forward():
    base = tiny()
    model = copy.deepcopy(base)
    plugin = plugin_for(base, lambda_agree=0.0, lambda_dis=0.0).train()
    plugin.memory.add_prototype("a", torch.randn(D))
    plugin.begin_stage(stage_info(2, "b"), model)
    calls = []
    encode = model.encode
    model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    _, terms = step_terms(plugin, model, batch())
    assert len(calls) == 1  # the main forward only
    assert set(terms) == {"agree", "disagree"}
    for v in terms.values():
        assert torch.equal(v, torch.zeros(())) and not v.requires_grad


def test_in_the_loop_objective():
    base = tiny()
    model = copy.deepcopy(base).train()
    plugin = plugin_for(base).train()
    plugin.begin_stage(stage_info(1, "a"), model)
    objective = MlmObjective(model, [plugin])
    terms = objective(batch())
    assert set(terms) == {"mlm", "hprompt/agree", "hprompt/disagree"}
    sum(terms.values()).backward()
    trainable = {id(p) for p in objective.parameters() if p.requires_grad}
    assert {id(p) for p in plugin.generator.hypernet.parameters()} <= trainable
    assert not {id(p) for p in plugin.generator.encoder.model.parameters()} & trainable


# ----------------------------------------------------------------------------- state


def test_running_stats_update():
    mem = QueryMemory(3, momentum=0.9)
    q1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    mem.update(q1)
    torch.testing.assert_close(mem.mean, torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(mem.var, torch.tensor([1.0, 0.0, 1.0]))
    q2 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mem.update(q2)
    torch.testing.assert_close(mem.mean, torch.tensor([1.8, 1.8, 1.8]))
    torch.testing.assert_close(mem.var, torch.tensor([0.9, 0.0, 0.9]))
    assert int(mem.num_updates) == 2
    # the plug-in updates in train mode only
    base = tiny()
    plugin = plugin_for(base).train()
    step_terms(plugin, base, batch())
    assert int(plugin.memory.num_updates) == 1
    plugin.eval()
    step_terms(plugin, base, batch(seed=1))
    assert int(plugin.memory.num_updates) == 1


def test_prototypes_and_stats_round_trip_through_state_dict_and_meta(tmp_path):
    base = tiny()
    model = copy.deepcopy(base)
    plugin = plugin_for(base).train()
    for i, dom in enumerate(["a", "b"]):
        plugin.begin_stage(stage_info(i + 1, dom), model)
        step_terms(plugin, model, batch(seed=i))
        blocks = batch(7, seed=10 + i)
        plugin.end_stage(stage_info(i + 1, dom), model, blocks["input_ids"], blocks["attention_mask"])
    assert plugin.prototype_names == ["a", "b"] and plugin.memory.prototypes.shape == (2, D)
    q, _ = plugin.generator.encoder(blocks["input_ids"], blocks["attention_mask"])
    torch.testing.assert_close(plugin.memory.prototypes[1], q.mean(0))
    plugin.end_stage(stage_info(2, "b"), model, blocks["input_ids"], blocks["attention_mask"])  # again: replaced
    assert plugin.prototype_names == ["a", "b"]

    # bare safetensors + JSON meta
    save_file(plugin.state_dict(), str(tmp_path / "p.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps(plugin.meta()))
    fresh = plugin_for(tiny(seed=1))
    assert fresh.memory.prototypes.shape == (0, D)
    fresh.load_state_dict(load_file(str(tmp_path / "p.safetensors")))
    fresh.load_meta(json.loads((tmp_path / "meta.json").read_text()))
    for k, v in plugin.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert fresh.prototype_names == ["a", "b"]

    # the loop's checkpoint format (ModuleList prefix "0.", save_tree / load_tree)
    save_tree(nn.ModuleList([plugin]).state_dict(), tmp_path, "plugins")
    again = plugin_for(tiny(seed=2))
    again.load_stage_state(load_tree(tmp_path, "plugins"), plugin.meta(), prefix="0.")
    assert torch.equal(again.memory.prototypes, plugin.memory.prototypes)
    assert torch.equal(again.memory.mean, plugin.memory.mean) and torch.equal(again.memory.var, plugin.memory.var)
    assert again.prototype_names == ["a", "b"]
    with pytest.raises(ValueError):
        again.load_meta({"prototype_names": ["a"]})


# ----------------------------------------------------------------------------- fine-tuning prompter


def test_prompt_generator_is_batch_independent_and_serves_the_task_model():
    base = tiny()
    plugin = plugin_for(base)
    with torch.no_grad():
        plugin.generator.hypernet.up.weight.normal_()
    gen = build_prompt_generator(base, 4, 16, plugin.state_dict(), freeze_hypernet=True).eval()
    assert all(not p.requires_grad for p in gen.parameters())
    assert set(gen.state_dict()) == {f"hypernet.{k}" for k in plugin.generator.hypernet.state_dict()}
    b = batch(4, pad_from=6)
    full = gen(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(full, plugin.generator(b["input_ids"], b["attention_mask"]))
    # the same example alone, trimmed of its padding, and inside a reordered batch
    alone = gen(b["input_ids"][2:3, :6], b["attention_mask"][2:3, :6])
    torch.testing.assert_close(alone, full[2:3], atol=1e-5, rtol=0)
    order = torch.tensor([3, 2, 0])
    torch.testing.assert_close(gen(b["input_ids"][order], b["attention_mask"][order]), full[order], atol=1e-5, rtol=0)
    trainable = build_prompt_generator(base, 4, 16, plugin.state_dict(), freeze_hypernet=False)
    assert all(p.requires_grad for p in trainable.parameters())

    task = TaskModel(copy.deepcopy(base), num_labels=3, plugins=[GeneratedPrompts(gen)])
    out = task(TaskBatch(b["input_ids"], b["attention_mask"], torch.zeros(4, dtype=torch.long)))
    assert out.logits.shape == (4, 3)
    assert not {id(p) for p in gen.encoder.model.parameters()} & {id(p) for p in task.parameters()}


@pytest.mark.parametrize("at_finetune", [True, False])
def test_prompts_at_finetune_switches_the_fine_tuning_plugin(at_finetune):
    from components.config import load_config
    from components.methods.registry import finetune_plugins, pretrain_plugins

    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml", REPO_ROOT / "pipelines/configs/methods/hprompt.yaml"],
                      [f"methods.hprompt.prompts_at_finetune={str(at_finetune).lower()}"])
    assert (GeneratedPrompts in finetune_plugins(cfg)) is at_finetune
    assert any(cls.name == "hprompt" for cls in pretrain_plugins(cfg))  # pre-training keeps HPrompt either way


def test_presets_prompt_at_finetune_only_in_the_paper_ablations():
    """Default (`hprompt`, `full`): HPrompt acts through pre-training only; the `*_ftprompts` presets
    prompt every fine-tuning input as the paper does."""
    from components.config import load_config
    from components.methods.registry import finetune_plugins

    def prompted(preset: str) -> bool:
        cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml", REPO_ROOT / f"pipelines/configs/methods/{preset}.yaml"])
        return GeneratedPrompts in finetune_plugins(cfg)

    assert [prompted(p) for p in ("hprompt", "full", "hprompt_ftprompts", "full_ftprompts")] == [False, False, True, True]


# ----------------------------------------------------------------------------- torch.distributed


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    with gloo_group(rank, world, init_file):
        base = tiny()
        model = copy.deepcopy(base).train()
        plugin = plugin_for(base, query_view="masked").train()  # statistics of the queries computed below
        plugin.begin_stage(stage_info(1, "a"), model)
        # as in the loop: model + plug-ins wrapped together by DDP
        ddp = DistributedDataParallel(MlmObjective(model, [plugin]), find_unused_parameters=True)
        b = batch(3 + rank, seed=rank)  # different batches and sizes per rank
        sum(ddp(b).values()).backward()
        blocks = batch(5 + 2 * rank, seed=20 + rank)
        plugin.end_stage(stage_info(1, "a"), model, blocks["input_ids"], blocks["attention_mask"])
        save_file({"mean": plugin.memory.mean, "var": plugin.memory.var, "proto": plugin.memory.prototypes,
                   "grad": plugin.generator.hypernet.up.weight.grad},
                  os.path.join(out_dir, f"rank{rank}.safetensors"))
        del ddp  # the reducer goes before its process group: a teardown race hung 1 run in 3
        dist.barrier()


def test_statistics_and_prototypes_are_identical_across_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        run_ddp(_ddp_worker, (2, os.path.join(tmp, "init"), tmp))
        r0, r1 = (load_file(os.path.join(tmp, f"rank{r}.safetensors")) for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # and they equal the single-process statistics of the union
    base = tiny()
    enc = QueryEncoder(base)
    qs = [enc(batch(3 + r, seed=r)["input_ids"], batch(3 + r, seed=r)["attention_mask"])[0] for r in (0, 1)]
    allq = torch.cat(qs)
    torch.testing.assert_close(r0["mean"], allq.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r0["var"], allq.var(0, unbiased=False), atol=1e-5, rtol=1e-4)
    ps = [enc(batch(5 + 2 * r, seed=20 + r)["input_ids"], batch(5 + 2 * r, seed=20 + r)["attention_mask"])[0] for r in (0, 1)]
    torch.testing.assert_close(r0["proto"][0], torch.cat(ps).mean(0), atol=1e-5, rtol=1e-4)


def test_first_domain_has_no_disagreement_unless_the_virtual_negative_is_asked_for():
    base = tiny()
    model = copy.deepcopy(base).train()
    calls = []
    encode = model.encode
    model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    default = plugin_for(base, lambda_agree=0.0, margin=-1.0).train()
    default.begin_stage(stage_info(1, "a"), model)
    _, terms = step_terms(default, model, batch())
    assert torch.equal(terms["disagree"], torch.zeros(())) and len(calls) == 1  # no negative, no extra forward
    virtual = plugin_for(base, lambda_agree=0.0, margin=-1.0, virtual_negative=True).train()
    virtual.begin_stage(stage_info(1, "a"), model)
    _, terms = step_terms(virtual, model, batch())
    assert float(terms["disagree"].detach()) > 0 and len(calls) == 3


@pytest.mark.parametrize("stop", [True, False])
def test_stop_gradient_keeps_the_disagreement_off_the_earlier_prompt(stop):
    """With stop_grad_negative the hypernetwork's L_dis gradient is exactly that of the own
    prompt's branch (the prototype's prompt P(c_k) gets none); without it, it is not."""
    base = tiny()
    model = copy.deepcopy(base).eval()
    plugin = plugin_for(base, lambda_agree=0.0, lambda_dis=1.0, margin=-1.0, stop_grad_negative=stop).eval()
    plugin.memory.add_prototype("a", torch.randn(D))
    plugin.begin_stage(stage_info(2, "b"), model)
    b = batch()
    hidden, terms = step_terms(plugin, model, b)
    params = list(plugin.generator.hypernet.parameters())
    got = torch.autograd.grad(terms["disagree"], params)
    with torch.no_grad():
        proto = plugin.generator.hypernet(plugin.memory.prototypes[:1]).expand(b["input_ids"].shape[0], -1, -1)
        neg = mean_pool(model.encode(model.embed(b["input_ids"]), b["attention_mask"], proto), b["attention_mask"])
    hidden, _ = step_terms(plugin, model, b)
    own_only = torch.autograd.grad(disagreement_loss(mean_pool(hidden, b["attention_mask"]), neg, -1.0), params)
    same = all(torch.allclose(g, o, atol=1e-7) for g, o in zip(got, own_only))
    assert same == stop


@pytest.mark.parametrize("view", ["visible", "masked"])
def test_query_view(view):
    """"visible": the query reads only the positions the MLM does not predict, so what stands at
    the predicted positions ([MASK], a random token, the true token) cannot reach the prompt;
    "masked" (the first implementation) pools the masked block, [MASK] tokens included."""
    base = tiny()
    plugin = plugin_for(base, query_view=view).eval()
    b = batch(pad_from=None)
    b["labels"][:, 5] = b["input_ids"][:, 5]
    other = dict(b, input_ids=b["input_ids"].clone())
    other["input_ids"][:, [2, 5]] = 3  # different tokens at the predicted positions only
    ctx, ctx_other = {}, {}
    plugin.prefix(base, b, ctx)
    plugin.prefix(base, other, ctx_other)
    same = torch.allclose(ctx["hprompt/query"], ctx_other["hprompt/query"], atol=1e-6)
    assert same == (view == "visible")
    assert not torch.allclose(ctx["hprompt/teacher"], ctx_other["hprompt/teacher"])  # teacher: the MLM's input
