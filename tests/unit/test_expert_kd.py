"""Expert-guided distillation (UEGP / MoEGP): loss, expert files, logits cache, plug-in, DDP."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from components.config import DistillConfig
from components.errors import InputError
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskBatch, TaskModel
from components.pretrain.expert_kd import (
    ExpertKDPlugin,
    ExpertSpec,
    expert_logits_cache,
    experts_for_stage,
    kd_loss,
    logits_file_key,
    mask_last_content,
    template_blocks,
)
from components.pretrain.experts import expert_fingerprint, expert_head, load_expert, save_expert
from tests.helpers.ddp import gloo_group, run_ddp
from tests.helpers.tiny import stage_info, tiny_hf_mlm

D = 32
VOCAB = 100
PAD, CLS, SEP, MASK = 0, 1, 2, 3


def tiny_mlm(seed: int = 0) -> MaskedLM:
    return MaskedLM(tiny_hf_mlm(VOCAB, pad_token_id=PAD, seed=seed))


def build(meta: dict) -> TaskModel:
    return TaskModel(tiny_mlm(123), meta["num_labels"], pooling=meta["pooling"])


def make_blocks(n: int = 10, t: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = np.full((n, t), PAD, dtype=np.int32)
    for i in range(n):
        length = int(rng.integers(4, t + 1))
        blocks[i, 0], blocks[i, length - 1] = CLS, SEP
        blocks[i, 1:length - 1] = rng.integers(4, VOCAB, length - 2)
    return blocks


def meta_for(task="a", num_labels=3, regression=False, pooling="cls", **extra):
    return {"task": task, "num_labels": num_labels, "is_regression": regression, "pooling": pooling,
            "label_names": [f"l{i}" for i in range(num_labels)], "model": "tiny-bert", **extra}


def make_expert(path: Path, seed=1, **kw) -> Path:
    meta = meta_for(**kw)
    torch.manual_seed(seed)
    model = TaskModel(tiny_mlm(seed), meta["num_labels"], pooling=meta["pooling"])
    return save_expert(path, model, meta)


# ----------------------------------------------------------------------------- kd_loss


def test_kd_loss_matches_hand_computation():
    s = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    t = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    T = 2.0
    total = 0.0
    for srow, trow in zip(s, t):
        zp = sum(math.exp(v / T) for v in trow)
        zq = sum(math.exp(v / T) for v in srow)
        p = [math.exp(v / T) / zp for v in trow]
        q = [math.exp(v / T) / zq for v in srow]
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = T * T * total / 2                      # T^2 * batchmean KL(p || q)
    got = kd_loss(torch.tensor(s), torch.tensor(t), T, regression=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # regression: plain MSE, no temperature
    sr, tr = np.array([[0.5], [2.0]]), np.array([[1.0], [-1.0]])
    mse = kd_loss(torch.tensor(sr), torch.tensor(tr), T, regression=True)
    assert mse.item() == pytest.approx(((0.5 - 1.0) ** 2 + (2.0 + 1.0) ** 2) / 2)


def test_kd_loss_zero_when_equal_and_grad_flows():
    x = torch.randn(4, 5)
    assert kd_loss(x, x.clone(), 2.0, False).item() == 0.0
    assert kd_loss(x[:, :1], x[:, :1].clone(), 2.0, True).item() == 0.0
    hidden = torch.randn(4, 6, D, requires_grad=True)
    head = nn.Linear(D, 3)
    loss = kd_loss(head(hidden[:, 0]), torch.randn(4, 3), 2.0, False)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0
    assert hidden.grad[:, 0].abs().sum() > 0 and hidden.grad[:, 1:].abs().sum() == 0


# ----------------------------------------------------------------------------- expert files


def test_save_load_expert_roundtrip(tmp_path):
    d = make_expert(tmp_path / "exp_a")
    assert (d / "model.safetensors").is_file() and (d / "expert.json").is_file()
    model, meta = load_expert(d, build)
    assert meta["fingerprint"] == expert_fingerprint(d) and meta["label_names"] == ["l0", "l1", "l2"]
    torch.manual_seed(1)
    original = TaskModel(tiny_mlm(1), 3).eval()
    ids = torch.as_tensor(make_blocks(4), dtype=torch.long)
    batch = TaskBatch(input_ids=ids, attention_mask=(ids != PAD).long(), labels=torch.zeros(4))
    with torch.no_grad():
        assert torch.equal(model(batch).logits, original(batch).logits)
    w, b = expert_head(d)
    assert torch.equal(w, original.head.weight) and torch.equal(b, original.head.bias)
    # overwrite in place: still one valid directory, new fingerprint
    fp = expert_fingerprint(d)
    make_expert(d, seed=2)
    assert expert_fingerprint(d) != fp and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_expert_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="exp_missing"):
        load_expert(tmp_path / "exp_missing", build)
    d = make_expert(tmp_path / "exp_bad")
    (d / "expert.json").write_text("{not json")
    with pytest.raises(InputError, match="expert.json"):
        load_expert(d, build)
    d2 = make_expert(tmp_path / "exp_tampered")
    with open(d2 / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="model.safetensors"):
        load_expert(d2, build)
    d3 = make_expert(tmp_path / "exp_trunc")
    (d3 / "model.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="exp_trunc"):
        load_expert(d3, build, verify=False)


# ----------------------------------------------------------------------------- logits cache


def test_logits_cache_hit_and_invalidation(tmp_path):
    d = make_expert(tmp_path / "exp")
    blocks = make_blocks(10)
    forwards = []

    def spy_build(meta):
        model = build(meta)
        model.register_forward_hook(lambda *a: forwards.append(1))
        return model

    stats: dict = {}
    p1 = expert_logits_cache(d, blocks, PAD, tmp_path / "cache", "blocks-v1", spy_build, batch_size=4, stats=stats)
    assert not stats["hit"] and stats["forwards"] == 3 and len(forwards) == 3
    arr = np.load(p1)
    assert arr.shape == (10, 3) and arr.dtype == np.float32 and p1.parent.name == "expert_logits"
    # identical to the expert's own eval-mode forward
    model, _ = load_expert(d, build)
    ids = torch.as_tensor(blocks, dtype=torch.long)
    with torch.no_grad():
        ref = model(TaskBatch(input_ids=ids, attention_mask=(ids != PAD).long(), labels=torch.zeros(10))).logits
    np.testing.assert_allclose(arr, ref.numpy(), rtol=1e-5, atol=1e-6)

    p2 = expert_logits_cache(d, blocks, PAD, tmp_path / "cache", "blocks-v1", spy_build, stats=stats)
    assert p2 == p1 and stats["hit"] and stats["forwards"] == 0 and len(forwards) == 3

    make_expert(d, seed=7)                            # the expert changed: new key, recomputed
    p3 = expert_logits_cache(d, blocks, PAD, tmp_path / "cache", "blocks-v1", spy_build, stats=stats)
    assert p3 != p1 and not stats["hit"] and len(forwards) > 3
    assert not np.allclose(np.load(p3), arr)
    p4 = expert_logits_cache(d, blocks, PAD, tmp_path / "cache", "blocks-v2", spy_build, stats=stats)
    assert p4 not in (p1, p3)                         # other blocks: other key


def test_mask_pooling_cache(tmp_path):
    ids = torch.tensor([[CLS, 10, 11, SEP, PAD], [CLS, 12, 13, 14, SEP]])
    new, pos = mask_last_content(ids, PAD, MASK)
    assert pos.tolist() == [2, 3]
    assert new.tolist() == [[CLS, 10, MASK, SEP, PAD], [CLS, 12, 13, MASK, SEP]]
    d = make_expert(tmp_path / "exp_mask", pooling="mask")
    with pytest.raises(InputError, match="mask_id"):
        expert_logits_cache(d, make_blocks(3), PAD, tmp_path / "c", "b", build)
    p = expert_logits_cache(d, make_blocks(3), PAD, tmp_path / "c", "b", build, mask_id=MASK)
    assert np.load(p).shape == (3, 3)


def test_template_view_gives_a_mask_slot_expert_its_template(tmp_path):
    suffix = [20, 21, MASK, 22]   # " It was [MASK] ."
    ids = torch.tensor([[CLS, 10, 11, SEP, PAD, PAD, PAD, PAD, PAD],
                        [CLS, 12, 13, 14, 15, 16, 17, 18, SEP]])
    new, pos = template_blocks(ids, PAD, suffix, MASK)
    assert new.tolist() == [[CLS, 10, 11, 20, 21, MASK, 22, SEP, PAD],
                            [CLS, 12, 13, 14, 20, 21, MASK, 22, SEP]]  # 3 of 7 text tokens fit: cut at the end
    assert pos.tolist() == [5, 6] and (new[torch.arange(2), pos] == MASK).all()
    with pytest.raises(InputError, match="no room"):
        template_blocks(ids[:, :6], PAD, suffix, MASK)
    d = make_expert(tmp_path / "exp_mask", pooling="mask")
    blocks = make_blocks(4)
    plain = expert_logits_cache(d, blocks, PAD, tmp_path / "c", "b", build, mask_id=MASK)
    templ = expert_logits_cache(d, blocks, PAD, tmp_path / "c", "b", build, mask_id=MASK, template_suffix=suffix)
    assert templ != plain and not np.allclose(np.load(templ), np.load(plain))  # another view, another key
    model, _ = load_expert(d, build)
    t_ids, t_pos = template_blocks(torch.as_tensor(blocks, dtype=torch.long), PAD, suffix, MASK)
    with torch.no_grad():
        want = model.eval()(TaskBatch(t_ids, (t_ids != PAD).long(), torch.zeros(4), mask_pos=t_pos)).logits
    np.testing.assert_allclose(np.load(templ), want.numpy(), atol=1e-5)


def test_a_cls_expert_fine_tuned_on_templates_reads_its_template_and_a_plain_one_does_not(tmp_path):
    """CoCa's default task head reads [CLS] of the templated input: such an expert (meta
    "template") gets the templated block, read at [CLS]; an expert fine-tuned on plain text keeps
    the plain block and its cache key whatever the teacher view."""
    suffix = [20, 21, MASK, 22]
    blocks = make_blocks(4)
    templated = make_expert(tmp_path / "exp_t", pooling="cls", template=True)
    got = expert_logits_cache(templated, blocks, PAD, tmp_path / "c", "b", build, mask_id=MASK, template_suffix=suffix)
    model, _ = load_expert(templated, build)
    t_ids, _ = template_blocks(torch.as_tensor(blocks, dtype=torch.long), PAD, suffix, MASK)
    with torch.no_grad():
        want = model.eval()(TaskBatch(t_ids, (t_ids != PAD).long(), torch.zeros(4))).logits
    np.testing.assert_allclose(np.load(got), want.numpy(), atol=1e-5)
    assert got != expert_logits_cache(templated, blocks, PAD, tmp_path / "c", "b", build, mask_id=MASK)

    plain = make_expert(tmp_path / "exp_p", pooling="cls")
    a = expert_logits_cache(plain, blocks, PAD, tmp_path / "c", "b", build, mask_id=MASK, template_suffix=suffix)
    assert a == expert_logits_cache(plain, blocks, PAD, tmp_path / "c", "b", build)
    with pytest.raises(InputError, match="'template' must be true/false"):
        make_expert(tmp_path / "exp_bad", template="yes")


# ----------------------------------------------------------------------------- which experts


def test_experts_for_stage():
    avail = {"a": "/e/a", "b": "/e/b", "c": "/e/c"}
    st = stage_info(i=2, domain="b")
    assert experts_for_stage("uegp", st, avail) == ["b"]
    assert experts_for_stage("moegp", st, avail) == ["a", "b"]
    assert experts_for_stage("moegp", stage_info(i=1, domain="a"), avail) == ["a"]
    assert experts_for_stage("none", st, avail) == []
    with pytest.raises(InputError, match="no expert for a"):
        experts_for_stage("moegp", st, {"b": "/e/b"})


# ----------------------------------------------------------------------------- plug-in


def _logits_file(path: Path, n: int, c: int, seed: int) -> str:
    np.save(path, np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32))
    return str(path)


def _batch(n_rows: int, idx: list[int], t: int = 12):
    ids = torch.as_tensor(make_blocks(n_rows, t)[idx], dtype=torch.long)
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    masked = ids.clone()
    masked[:, 1] = MASK
    return {"input_ids": masked, "attention_mask": (ids != PAD).long(), "labels": labels,
            "block_index": torch.tensor(idx)}


def test_plugin_lambda_zero_is_exact_zero(tmp_path):
    plugin = ExpertKDPlugin(DistillConfig(mode="moegp", lambda_kd=0.0), D, [("a", 3, False, None)])
    assert len(list(plugin.parameters())) == 0       # no heads, no cache needed
    mlm = tiny_mlm()
    plugin.begin_stage(stage_info(work_dir=tmp_path), mlm)
    b = _batch(8, [0, 1])
    hidden = mlm.encode(mlm.embed(b["input_ids"]), b["attention_mask"])
    kd = plugin.loss_terms(mlm, b, hidden, {})["kd"]
    assert kd.item() == 0.0 and not kd.requires_grad
    none = ExpertKDPlugin(DistillConfig(mode="none"), D, [])
    assert none.loss_terms(mlm, b, hidden, {})["kd"].item() == 0.0


def test_plugin_uniform_loss_and_gradients(tmp_path):
    fa = _logits_file(tmp_path / "a.npy", 8, 3, 0)
    fb = _logits_file(tmp_path / "b.npy", 8, 1, 1)
    cfg = DistillConfig(mode="moegp", lambda_kd=0.5, temperature=2.0)
    plugin = ExpertKDPlugin(cfg, D, [("a", 3, False, None), ExpertSpec("b", 1, True, None)])
    mlm = tiny_mlm()
    plugin.begin_stage(stage_info(i=2, domain="b", work_dir=tmp_path,
                                  files={logits_file_key("a"): fa, logits_file_key("b"): fb}), mlm)
    b = _batch(8, [5, 2, 7])
    hidden = mlm.encode(mlm.embed(b["input_ids"]), b["attention_mask"])
    ctx: dict = {}
    kd = plugin.loss_terms(mlm, b, hidden, ctx)["kd"]
    z = hidden[:, 0]
    ta, tb = torch.from_numpy(np.load(fa)[[5, 2, 7]]), torch.from_numpy(np.load(fb)[[5, 2, 7]])
    expected = 0.5 * 0.5 * (kd_loss(plugin.heads["a"](z), ta, 2.0, False) + kd_loss(plugin.heads["b"](z), tb, 2.0, True))
    assert kd.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(ctx) == {"kd/a", "kd/b"}
    kd.backward()
    assert plugin.heads["a"].weight.grad.abs().sum() > 0 and plugin.heads["b"].weight.grad.abs().sum() > 0
    emb = mlm.backbone.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0   # through hidden[:, 0] into the backbone


def test_sample_weighting_same_expert_on_two_plugins(tmp_path):
    cfg = DistillConfig(mode="moegp", weighting="sample")
    specs = [("a", 3, False, None), ("b", 2, False, None), ("c", 1, True, None)]
    p1, p2 = ExpertKDPlugin(cfg, D, specs, seed=5), ExpertKDPlugin(cfg, D, specs, seed=5)
    picks = [p1.sample_expert(s) for s in range(40)]
    assert picks == [p2.sample_expert(s) for s in range(40)]
    assert set(picks) == {"a", "b", "c"}
    # through loss_terms: the same expert is the one with a nonzero term on both "ranks"
    files = {logits_file_key(t): _logits_file(tmp_path / f"{t}.npy", 8, c, i) for i, (t, c, _, _) in enumerate(specs)}
    mlm = tiny_mlm()
    for p in (p1, p2):
        p.begin_stage(stage_info(i=3, domain="c", work_dir=tmp_path, files=files), mlm)
    for step in range(5):
        chosen = []
        for p, rows in ((p1, [0, 1]), (p2, [2, 3])):   # different data per rank
            b = _batch(8, rows)
            b["step"] = torch.tensor(step)
            ctx: dict = {}
            p.loss_terms(mlm, b, mlm.encode(mlm.embed(b["input_ids"]), b["attention_mask"]), ctx)
            chosen.append([k for k in ctx])
        assert chosen[0] == chosen[1] == [f"kd/{p1.sample_expert(step)}"]


def test_heads_persist_through_state_dict_and_stages(tmp_path):
    cfg = DistillConfig(mode="uegp")
    p1 = ExpertKDPlugin(cfg, D, [("a", 3, False, None)], seed=0)
    with torch.no_grad():
        p1.heads["a"].weight.add_(1.0)
    p1.kd_step += 7
    sd = p1.state_dict()
    assert set(sd) == {"heads.a.weight", "heads.a.bias", "kd_step"}
    # same stage, resumed
    p1b = ExpertKDPlugin(cfg, D, [("a", 3, False, None)], seed=0)
    p1b.load_state_dict(sd)
    assert torch.equal(p1b.heads["a"].weight, p1.heads["a"].weight) and int(p1b.kd_step) == 7
    # stage 2 under UEGP: expert b in use, head a restored (frozen) and kept in later checkpoints
    p2 = ExpertKDPlugin(cfg, D, [("b", 2, False, None)], seed=0)
    nn.ModuleList([p2]).load_state_dict({f"0.{k}": v for k, v in sd.items()})   # strict, as the loop does
    assert torch.equal(p2.heads["a"].weight, p1.heads["a"].weight)
    assert not p2.heads["a"].weight.requires_grad and p2.heads["b"].weight.requires_grad
    assert {"heads.a.weight", "heads.b.weight"} <= set(p2.state_dict())
    # stage 2 under MoEGP: the stage-1 head is reused (trained again)
    p3 = ExpertKDPlugin(DistillConfig(mode="moegp"), D, [("a", 3, False, None), ("b", 2, False, None)], seed=0)
    p3.load_state_dict(sd)                            # strict: new head 'b' is not "missing"
    assert torch.equal(p3.heads["a"].weight, p1.heads["a"].weight) and p3.heads["a"].weight.requires_grad
    # a resumed checkpoint that lacks a head that should be there is still an error
    p4 = ExpertKDPlugin(cfg, D, [("a", 3, False, None)], seed=0)
    p4.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="Missing key"):
        p4.load_state_dict({"kd_step": sd["kd_step"]})
    # warm start and head init that does not touch the global RNG
    torch.manual_seed(0)
    r0 = torch.rand(1)
    torch.manual_seed(0)
    ExpertKDPlugin(cfg, D, [("z", 4, False, None)])
    assert torch.equal(torch.rand(1), r0)
    w, b = torch.randn(3, D), torch.randn(3)
    p1.warm_start_from("a", w, b)
    assert torch.equal(p1.heads["a"].weight, w)
    with pytest.raises(InputError):
        p1.warm_start_from("a", torch.randn(2, D), torch.randn(2))
    d = make_expert(tmp_path / "exp_ws", seed=4)
    pw = ExpertKDPlugin(DistillConfig(mode="uegp", warm_start_head=True), D, [ExpertSpec("a", 3, False, None, str(d))])
    assert torch.equal(pw.heads["a"].weight, expert_head(d)[0])


# ----------------------------------------------------------------------------- DDP


class _Step(nn.Module):
    """What the loop does per step: one MLM forward, the plug-in's terms on the same hidden."""

    def __init__(self, mlm: MaskedLM, plugin: ExpertKDPlugin):
        super().__init__()
        self.mlm, self.plugin = mlm, plugin

    def forward(self, batch):
        hidden = self.mlm.encode(self.mlm.embed(batch["input_ids"]), batch["attention_mask"])
        terms = self.plugin.loss_terms(self.mlm, batch, hidden, {})
        return self.mlm.mlm_loss(hidden, batch["labels"]) + terms["kd"], terms["kd"].detach()


def _ddp_worker(rank: int, world: int, files: dict, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    with gloo_group(rank, world, f"{out_dir}/rendezvous"):
        results = {}
        for weighting in ("uniform", "sample"):
            cfg = DistillConfig(mode="moegp", lambda_kd=1.0, weighting=weighting)
            plugin = ExpertKDPlugin(cfg, D, [("a", 3, False, None), ("b", 1, True, None)], seed=3)
            mlm = tiny_mlm(rank)                       # different init per rank: DDP broadcasts rank 0's
            plugin.begin_stage(stage_info(i=2, domain="b", work_dir=Path(out_dir), files=files), mlm)
            ddp = DDP(_Step(mlm, plugin))
            opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
            grads_seen = {"a": 0.0, "b": 0.0}
            kds = []
            for step in range(4):
                rows = [rank * 8 + step * 2, rank * 8 + step * 2 + 1]
                opt.zero_grad()
                loss, kd = ddp(_batch(16, rows))
                loss.backward()
                for t in ("a", "b"):
                    grads_seen[t] += float(plugin.heads[t].weight.grad.abs().sum())
                kds.append(float(kd))
                opt.step()
            flat = torch.cat([p.detach().flatten() for p in plugin.heads.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            results[weighting] = (grads_seen, kds, [g.numpy() for g in gathered])
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"),
                 **{f"{w}_grad_{t}": r[0][t] for w, r in results.items() for t in ("a", "b")},
                 **{f"{w}_kd": np.array(r[1]) for w, r in results.items()},
                 **{f"{w}_heads{i}": g for w, r in results.items() for i, g in enumerate(r[2])})
        del ddp  # the reducer goes before its process group (see the H-Prompt DDP test)
        dist.barrier()


def test_moegp_ddp_two_ranks():
    """MoEGP with two experts under real DDP (gloo, 2 CPU processes): both heads get
    gradients and end bit-identical on both ranks, for uniform and sampled weighting."""
    with tempfile.TemporaryDirectory(prefix="kd-ddp-") as tmp:   # not pytest's shared basetemp
        tmp_path = Path(tmp)
        files = {logits_file_key("a"): _logits_file(tmp_path / "a.npy", 16, 3, 0),
                 logits_file_key("b"): _logits_file(tmp_path / "b.npy", 16, 1, 1)}
        run_ddp(_ddp_worker, (2, files, tmp))
        r0, r1 = dict(np.load(tmp_path / "rank0.npz")), dict(np.load(tmp_path / "rank1.npz"))
    for w in ("uniform", "sample"):
        for r in (r0, r1):
            assert r[f"{w}_grad_a"] > 0 and r[f"{w}_grad_b"] > 0       # both heads trained
            np.testing.assert_array_equal(r[f"{w}_heads0"], r[f"{w}_heads1"])  # identical across ranks
        assert not np.allclose(r0[f"{w}_kd"], r1[f"{w}_kd"])           # ranks saw different data
