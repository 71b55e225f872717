"""Expert-guided distillation during continual pre-training: UEGP / MoEGP (docs/methods.md).

During pre-training on domain t the student carries one small task head per expert in use,
h_k(x) = W_k z(x) + b_k with z(x) = hidden[:, 0] (the [CLS] position of the SAME forward the
MLM loss already ran: KD costs no extra student forward). On the domain's unlabeled blocks
the heads are distilled from the frozen experts' logits:

    L = L_MLM + lambda_kd * sum_k w_k * L_KD^k
    L_KD^k = T^2 * KL(softmax(t_k / T) || softmax(s_k / T))     (classification, batchmean)
    L_KD^k = mean (s_k - t_k)^2                                  (regression)

UEGP uses the current domain's expert only; MoEGP the experts of every domain seen so far.
Weights: "uniform" w_k = 1/K; "sample" one expert per step (w = 1 for it, 0 for the rest).

Teacher logits are computed ONCE per (blocks, expert) by `expert_logits_cache` (the experts
are frozen and the clean blocks do not change within a stage) and looked up per step with
`batch["block_index"]`. Teacher input = the clean block as a single text (pair tasks too:
the block is the "document first" segment, no second segment), attention mask = ids != pad.
An expert fine-tuned on templated inputs (under CoCa; meta "template") gets what it was
fine-tuned on: the block's text in the default template, "[CLS] <block text> It was [MASK]. [SEP]"
(`teacher_view: template`), read at its own pooling ([CLS] or the slot); with `last_masked` (the
first implementation) a slot expert reads the block with its last token masked, others the plain block.

Heads are initialised from a generator seeded by (seed, task name), so creating them never
touches the global RNG: with lambda_kd = 0 (or mode "none") the plug-in owns no parameters
and adds an exact zero, i.e. the loop is exactly NCL.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import Config, DistillConfig
from components.errors import InputError
from components.io import atomic_write_bytes, atomic_write_json
from components.models.masked_lm import MaskedLM
from components.models.precision import autocast_for, resolve_precision
from components.models.loading import load_tokenizer
from components.data.task_encoding import template_suffix
from components.models.task_model import TaskBatch, TaskInfo, TaskModel
from components.pretrain.experts import expert_fingerprint, expert_head, load_expert, read_expert_meta, save_expert
from components.pretrain.plugin import Driver, PretrainPlugin, StageInfo, Tokens
from components.seeding import mix_seed, name_id

CACHE_FORMAT = 1


def logits_file_key(task: str) -> str:
    """Key of a task's cached expert-logits file in `StageInfo.files`."""
    return f"expert_logits/{task}"


# ----------------------------------------------------------------------------- the loss


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, regression: bool
) -> torch.Tensor:
    """Distillation loss of student logits s [B, C] towards teacher logits t [B, C].

    Classification (temperature T):
        p = softmax(t / T),  q = softmax(s / T)
        L = T^2 * (1 / B) * sum_b sum_c p_bc * (log p_bc - log q_bc)
    i.e. T^2 * KL(p || q) averaged over the batch ("batchmean"); the T^2 keeps gradient
    magnitudes comparable across temperatures (Hinton et al. 2015). Regression:
        L = mean over b, c of (s_bc - t_bc)^2          (no temperature)
    Computed in float32; the teacher gets no gradient. L = 0 exactly when s == t.
    """
    s = student_logits.float()
    t = teacher_logits.detach().float().to(s.device)
    if s.shape != t.shape:
        raise ValueError(f"kd_loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    if regression:
        return F.mse_loss(s, t)
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


# ----------------------------------------------------------------------------- teacher cache


def mask_last_content(ids: torch.Tensor, pad_id: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For experts with pooling "mask": overwrite the last content token of every block (the
    token just before the final [SEP], i.e. the last non-pad token) with `mask_id`.

    Blocks are [CLS] ... [SEP] [PAD]*; the slot is max(last_non_pad - 1, 1) (a block of only
    [CLS] [SEP] masks its [SEP]). Returns (new ids, mask_pos [B]). This approximates the
    expert's template ("<text> ... [MASK]") on raw corpus blocks: the expert reads the block
    with its final word hidden and its mask-slot state gives the logits.
    """
    nonpad = ids != pad_id
    t = ids.shape[1]
    pos_idx = torch.arange(t, device=ids.device).expand_as(ids)
    last = torch.where(nonpad, pos_idx, torch.zeros_like(pos_idx)).amax(1)
    slot = (last - 1).clamp(min=1).clamp(max=t - 1)
    out = ids.clone()
    out[torch.arange(ids.shape[0], device=ids.device), slot] = mask_id
    return out, slot


def template_blocks(ids: torch.Tensor, pad_id: int, suffix: list[int], mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks [CLS] c_1..c_m [SEP] [PAD]* rewritten as the default template with the block as its
    text: [CLS] c_1..c_k <suffix> [SEP] [PAD]*, k = min(m, T - 2 - len(suffix)) (the text is cut at
    its end, as the template encoder cuts texts). `suffix` (task_encoding.template_suffix) holds
    `mask_id` once; returns (new ids [B, T], mask_pos [B])."""
    t = ids.shape[1]
    room = t - 2 - len(suffix)
    if room < 1:
        raise InputError(f"teacher_view template: {t}-token blocks leave no room for text before the "
                         f"{len(suffix)}-token template suffix")
    tail = torch.tensor(suffix, dtype=ids.dtype, device=ids.device)
    out = torch.full_like(ids, pad_id)
    pos = torch.empty(ids.shape[0], dtype=torch.long, device=ids.device)
    for i, row in enumerate(ids):
        m = int((row != pad_id).sum()) - 2   # content tokens between [CLS] and [SEP]
        k = max(0, min(m, room))
        out[i, :1 + k] = row[:1 + k]
        out[i, 1 + k:1 + k + len(suffix)] = tail
        out[i, 1 + k + len(suffix)] = row[m + 1]
        pos[i] = 1 + k + suffix.index(mask_id)
    return out, pos


def _cache_key(blocks_fingerprint: str, expert_fp: str, pad_id: int, pooling: str, mask_id: int | None,
               precision: str = "fp32", template_suffix: list[int] | None = None) -> str:
    fields = {"v": CACHE_FORMAT, "blocks": blocks_fingerprint, "expert": expert_fp, "pad": int(pad_id),
              "pooling": pooling, "mask_id": None if pooling == "cls" else int(mask_id)}
    if precision != "fp32":  # fp32 keys stay those of earlier caches
        fields["precision"] = precision
    if template_suffix:  # the first implementation's (last token masked) keys stay too
        fields["template_suffix"] = [int(t) for t in template_suffix]
    material = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def _valid_cache(path: Path, n: int) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.ndim == 2 and arr.shape[0] == n and arr.dtype == np.float32


def expert_logits_cache(
    expert_dir: Path | str,
    blocks: np.ndarray,
    pad_id: int,
    cache_dir: Path | str,
    blocks_fingerprint: str,
    build_task_model: Callable[[dict], TaskModel],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    mask_id: int | None = None,
    stats: dict | None = None,
    precision: str = "fp32",
    template_suffix: list[int] | None = None,
) -> Path:
    """The expert's logits on every clean block, computed once and cached; returns the path.

    blocks: [n, T] int token ids ([CLS] ... [SEP] [PAD]*), the stage's training blocks in
    `block_index` order. Saves float32 [n, C] to
        cache_dir/expert_logits/<key>.npy   (+ <key>.json, human-readable provenance)
    key = sha256 of (blocks_fingerprint, expert fingerprint = sha256 of its weights, pad_id,
    pooling, mask_id, format). A second call with the same inputs loads nothing and runs no
    forward; a re-saved expert has a new fingerprint, hence a new key. The expert runs in
    eval mode without gradients; for pooling "mask" `mask_id` is required. An expert fine-tuned on
    templated inputs (meta "template", default pooling == "mask") reads the block in its template
    when `template_suffix` is given (`template_blocks`, part of the key); else a slot expert reads
    it with its last content token masked (`mask_last_content`), any other expert the plain block. `stats`, if given, receives
    {"hit": bool, "forwards": number of batched expert forwards run, "path": str}.
    `precision` (auto / fp32 / bf16, see components.models.precision) is part of the key.
    """
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise InputError(f"expert_logits_cache: blocks must be [n > 0, T], got shape {blocks.shape}")
    meta = read_expert_meta(expert_dir)
    pooling = meta["pooling"]
    if pooling == "mask" and mask_id is None:
        raise InputError(f"expert {expert_dir}: pooling 'mask' needs mask_id for the cached teacher inputs")
    if not meta.get("template", pooling == "mask"):
        template_suffix = None  # an expert fine-tuned on plain text reads the plain block
    used = resolve_precision(precision, device)
    key = _cache_key(blocks_fingerprint, expert_fingerprint(expert_dir), pad_id, pooling, mask_id, used,
                     template_suffix)
    path = Path(cache_dir) / "expert_logits" / f"{key}.npy"
    n = blocks.shape[0]
    if stats is not None:
        stats.update(hit=False, forwards=0, path=str(path))
    if path.is_file() and _valid_cache(path, n):
        if stats is not None:
            stats["hit"] = True
        return path

    model, meta = load_expert(expert_dir, build_task_model)
    model.to(device).eval()
    out = np.empty((n, meta["num_labels"]), dtype=np.float32)
    forwards = 0
    with torch.inference_mode(), autocast_for(device, used):
        for lo in range(0, n, batch_size):
            ids = torch.as_tensor(blocks[lo:lo + batch_size], dtype=torch.long, device=device)
            mask_pos = None
            if template_suffix:
                ids, mask_pos = template_blocks(ids, pad_id, template_suffix, mask_id)
            elif pooling == "mask":
                ids, mask_pos = mask_last_content(ids, pad_id, mask_id)
            attn = (ids != pad_id).long()
            batch = TaskBatch(input_ids=ids, attention_mask=attn, labels=torch.zeros(len(ids), device=device),
                              mask_pos=mask_pos)
            out[lo:lo + len(ids)] = model(batch).logits.float().cpu().numpy()
            forwards += 1
    buf = io.BytesIO()
    np.save(buf, out)
    atomic_write_json(path.with_suffix(".json"), {
        "format": CACHE_FORMAT, "task": meta["task"], "expert_dir": str(expert_dir),
        "expert_fingerprint": meta["fingerprint"], "blocks_fingerprint": blocks_fingerprint,
        "shape": list(out.shape), "pad_id": int(pad_id), "pooling": pooling, "mask_id": mask_id,
        "template_suffix": template_suffix,
    })
    atomic_write_bytes(path, buf.getvalue())
    if stats is not None:
        stats["forwards"] = forwards
    return path


def expert_logits(cfg: Config, expert_dir: str, blocks: np.ndarray, fingerprint: str, base_weights: dict,
                  tokens: Tokens, build_task_model: Callable, threads: int) -> np.ndarray:
    """The cached logits of one expert on the stage's blocks (runs as a Ray task on the driver's behalf)."""
    torch.set_num_threads(max(1, threads))
    tokenizer = load_tokenizer(cfg.model.name)

    def build(meta: dict):
        return build_task_model(cfg, base_weights, TaskInfo(meta["task"], meta.get("label_names")), tokenizer)[0]

    suffix = template_suffix(tokenizer) if cfg.methods.distill.teacher_view == "template" else None
    path = expert_logits_cache(expert_dir, blocks, tokens.pad_id, cfg.data.cache_dir, fingerprint, build,
                               mask_id=tokens.mask_id, precision=cfg.finetune.precision, template_suffix=suffix)
    return np.load(path)


# ----------------------------------------------------------------------------- which experts


def experts_for_stage(mode: str, stage: StageInfo, available: dict[str, str]) -> list[str]:
    """Tasks (= domain names) whose experts are in use at `stage`.

    "none": []. "uegp": [stage.domain]. "moegp": stage.domains_seen (stages 1..t, in order).
    `available` maps task -> expert dir; a needed expert that is missing is an InputError.
    """
    if mode == "none":
        return []
    if mode == "uegp":
        wanted = [stage.domain]
    elif mode == "moegp":
        wanted = list(dict.fromkeys(stage.domains_seen or [stage.domain]))
        if stage.domain not in wanted:
            wanted.append(stage.domain)
    else:
        raise InputError(f"methods.distill.mode: unknown mode {mode!r} (none, uegp, moegp)")
    missing = [t for t in wanted if t not in available]
    if missing:
        raise InputError(
            f"methods.distill ({mode}, stage {stage.index}): no expert for {', '.join(missing)} "
            f"(have: {', '.join(sorted(available)) or 'none'})"
        )
    return wanted


# ----------------------------------------------------------------------------- the plug-in


@dataclass(frozen=True)
class ExpertSpec:
    task: str
    num_labels: int
    is_regression: bool
    logits_path: str | None = None   # else the payload's logits, else StageInfo.files[logits_file_key(task)]
    expert_dir: str | None = None    # for cfg.warm_start_head: copy the expert's head at creation


def _head_seed(seed: int, task: str) -> int:
    return mix_seed(seed, name_id("kd-head"), name_id(task))


def sample_seed(seed: int, step: int) -> int:
    """Seed of the per-step generator for "sample" weighting: a function of (seed, step) only,
    so every DDP rank draws the same expert at the same step without communication."""
    return mix_seed(seed, name_id("kd-sample"), step)


class ExpertKDPlugin(PretrainPlugin):
    """UEGP / MoEGP as a pre-training plug-in: adds {"kd": lambda_kd * sum_k w_k L_KD^k}.

    `experts`: the experts in use this stage, as ExpertSpec or (task, num_labels,
    is_regression[, logits_path[, expert_dir]]) tuples. With cfg.warm_start_head a newly
    created head copies its expert's head (from `expert_dir`); a head restored from a
    checkpoint afterwards wins. Heads live in `self.heads` (nn.ModuleDict keyed by
    task) and persist in the state dict across stages; loading a state dict that has heads the
    constructor did not create adds them (frozen); heads the constructor created for experts
    new at this stage may be absent from it (a strict load of the previous stage's state
    passes). Heads of experts not in use this stage are frozen (requires_grad False), so DDP
    never waits for them.

    DDP: build the plug-in (and load any checkpoint) before wrapping; the heads are trained
    with the model under the same DDP. In a step every trainable head is part of the graph
    (a head not picked by "sample" weighting enters as 0 * sum(params)), so DDP works with
    find_unused_parameters=False. "sample" draws the expert from a torch.Generator seeded by
    `sample_seed(seed, step)`; `step` is batch["step"] if the loop provides it, else the
    plug-in's own counter (buffer `kd_step`, +1 per training call, saved with checkpoints),
    identical on every rank since every rank makes the same number of calls.
    """

    name = "kd"

    def __init__(
        self,
        cfg: DistillConfig,
        hidden_size: int,
        experts: Sequence[ExpertSpec | tuple],
        seed: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = hidden_size
        self.seed = seed
        self.heads = nn.ModuleDict()
        self.register_buffer("kd_step", torch.zeros((), dtype=torch.long))
        self.active = cfg.mode != "none" and cfg.lambda_kd > 0
        self.specs: dict[str, ExpertSpec] = {}
        self.in_use: list[str] = []
        self.created: list[str] = []   # heads created by this constructor (warm-start candidates)
        self._teacher: dict[str, np.ndarray] = {}
        self._given: dict[str, np.ndarray] = {}   # logits shipped in the stage payload, by task
        self._fresh_keys: set[str] = set()
        self._forgivable: set[str] = set()   # created here and never loaded from a state dict
        self.register_load_state_dict_post_hook(ExpertKDPlugin._forgive_new_heads)
        if self.active:
            self.set_experts(experts)

    # -- the plug-in contract (driver side)

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return cfg.methods.distill.mode != "none" and cfg.methods.distill.lambda_kd > 0

    @classmethod
    def validate(cls, cfg: Config, model_config) -> None:
        for path in cfg.methods.distill.experts.values():
            read_expert_meta(path)

    @classmethod
    def uses_row0_models(cls, cfg: Config) -> bool:
        return True   # the experts are row 0's fine-tuned models

    @staticmethod
    def _expert_dir(driver: Driver, task: str) -> Path:
        return Path(driver.run_root) / "experts" / task

    @classmethod
    def wants_cell_model(cls, cfg: Config, task: str, driver: Driver) -> bool:
        return task not in cfg.methods.distill.experts and not (cls._expert_dir(driver, task) / "expert.json").is_file()

    @classmethod
    def keep_cell_model(cls, cfg: Config, task: str, record: dict, state: dict, driver: Driver) -> None:
        info = TaskInfo(task, record["label_names"])
        model, _, _ = driver.build_task_model(cfg, driver.base_weights(), info, driver.tokenizer)
        model.load_state_dict(state)
        save_expert(cls._expert_dir(driver, task), model, {
            "task": task, "num_labels": info.num_labels, "is_regression": record["label_names"] is None,
            "pooling": model.pooling, "template": any(p.reads_slot(cfg) for p in model.plugins),
            "label_names": record["label_names"], "model": cfg.model.name})

    @classmethod
    def prepare_stage(cls, cfg: Config, stage: StageInfo, blocks: np.ndarray, fingerprint: str,
                      driver: Driver) -> dict:
        """The experts in use (row 0's, or configured ones) and their logits on the stage's blocks."""
        root = Path(driver.run_root) / "experts"
        found = {p.parent.name: str(p.parent) for p in sorted(root.glob("*/expert.json"))} if root.is_dir() else {}
        available = {**found, **cfg.methods.distill.experts}
        experts, logits = [], {}
        for task in experts_for_stage(cfg.methods.distill.mode, stage, available):
            meta = read_expert_meta(available[task])
            logits[task] = driver.run_task(expert_logits, cfg, available[task], blocks, fingerprint,
                                           driver.base_weights(), driver.tokens, driver.build_task_model,
                                           int(max(1, cfg.finetune.cpus_per_cell)))
            experts.append(ExpertSpec(task, meta["num_labels"], meta["is_regression"]))
        return {"experts": experts, "logits": logits}

    @classmethod
    def build(cls, cfg: Config, model: MaskedLM, payload: dict) -> "ExpertKDPlugin":
        plugin = cls(cfg.methods.distill, model.hidden_size, payload.get("experts", []), seed=cfg.seed)
        plugin._given = dict(payload.get("logits", {}))
        return plugin

    # -- heads

    def _new_head(self, task: str, num_labels: int) -> nn.Linear:
        head = nn.utils.skip_init(nn.Linear, self.hidden_size, num_labels)   # no global RNG draw
        g = torch.Generator().manual_seed(_head_seed(self.seed, task))
        bound = 1.0 / self.hidden_size**0.5          # nn.Linear's default init, own generator
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=g)
            head.bias.uniform_(-bound, bound, generator=g)
        return head

    def set_experts(self, experts: Sequence[ExpertSpec | tuple]) -> None:
        """Set the experts in use; create missing heads; freeze the heads not in use."""
        specs = [e if isinstance(e, ExpertSpec) else ExpertSpec(*e) for e in experts]
        if not specs:
            raise InputError(f"methods.distill: mode '{self.cfg.mode}' with lambda_kd > 0 needs at least one expert")
        for s in specs:
            if not s.task or "." in s.task:
                raise InputError(f"methods.distill: expert name {s.task!r} cannot key a head (empty or has '.')")
            if s.num_labels < 1:
                raise InputError(f"methods.distill: expert '{s.task}' has num_labels={s.num_labels}")
            if s.task in self.heads:
                have = self.heads[s.task].out_features
                if have != s.num_labels:
                    raise InputError(f"methods.distill: expert '{s.task}' has {s.num_labels} outputs, "
                                     f"its existing student head {have}")
            else:
                self.heads[s.task] = self._new_head(s.task, s.num_labels)
                self.created.append(s.task)
                self._forgivable.add(s.task)
                if self.cfg.warm_start_head and s.expert_dir is not None:
                    self.warm_start_from(s.task, *expert_head(s.expert_dir))
        self.specs = {s.task: s for s in specs}
        self.in_use = [s.task for s in specs]
        for task, head in self.heads.items():
            head.requires_grad_(task in self.specs)

    def warm_start_from(self, task: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Copy an expert's head (weight [C, d], bias [C]) into the student head of `task`.
        Call before loading a checkpoint (a resumed head then wins) and before DDP wrapping."""
        head = self.heads[task]
        if tuple(weight.shape) != tuple(head.weight.shape) or tuple(bias.shape) != tuple(head.bias.shape):
            raise InputError(f"warm start of '{task}': expert head {tuple(weight.shape)} does not fit "
                             f"student head {tuple(head.weight.shape)}")
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Heads saved by earlier stages but not in use now: create them (frozen) so the
        # checkpoint loads strictly and they persist into later checkpoints.
        hp = prefix + "heads."
        saved = set()
        for key, value in state_dict.items():
            if key.startswith(hp) and key.endswith(".weight") and key.count(".") == hp.count(".") + 1:
                task = key[len(hp):-len(".weight")]
                saved.add(task)
                if task not in self.heads and value.ndim == 2:
                    head = nn.utils.skip_init(nn.Linear, value.shape[1], value.shape[0])
                    head.requires_grad_(False)
                    self.heads[task] = head
        # Heads this constructor created for experts new at this stage are legitimately absent
        # from the previous stage's state: forgiven in `_forgive_new_heads` (strict loads pass).
        self._forgivable -= saved
        self._fresh_keys = {f"{hp}{t}.{n}" for t in self._forgivable for n in ("weight", "bias")}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def _forgive_new_heads(module: "ExpertKDPlugin", incompatible_keys) -> None:
        fresh = getattr(module, "_fresh_keys", set())
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k not in fresh]
        module._fresh_keys = set()

    # -- stage

    def begin_stage(self, stage: StageInfo, model: MaskedLM) -> None:
        """Open every in-use expert's cached logits (np.load with mmap: pages are read on use)."""
        self._teacher = {}
        if not self.active:
            return
        if model.hidden_size != self.hidden_size:
            raise InputError(f"methods.distill: plug-in built for hidden size {self.hidden_size}, "
                             f"model has {model.hidden_size}")
        for task in self.in_use:
            spec = self.specs[task]
            if task in self._given:
                arr = self._given[task]
                if arr.ndim != 2 or arr.shape[1] != spec.num_labels:
                    raise InputError(f"methods.distill: shipped logits of '{task}' have shape {arr.shape}, "
                                     f"expected [n, {spec.num_labels}]")
                self._teacher[task] = arr
                continue
            path = stage.files.get(logits_file_key(task), spec.logits_path)
            if path is None:
                raise InputError(f"methods.distill: no cached logits for expert '{task}' at stage {stage.index} "
                                 f"(StageInfo.files['{logits_file_key(task)}'])")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(f"{path}: cannot read cached expert logits ({e})") from None
            if arr.ndim != 2 or arr.shape[1] != spec.num_labels:
                raise InputError(f"{path}: cached logits have shape {arr.shape}, expected [n, {spec.num_labels}] "
                                 f"for expert '{task}'")
            self._teacher[task] = arr

    def teacher_logits(self, task: str, block_index: torch.Tensor, device: torch.device) -> torch.Tensor:
        arr = self._teacher.get(task)
        if arr is None:
            raise RuntimeError(f"ExpertKDPlugin: begin_stage() has not opened the logits of '{task}'")
        idx = block_index.detach().cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= arr.shape[0]):
            raise InputError(f"cached logits of '{task}' have {arr.shape[0]} rows; block_index up to {idx.max()}"
                             " (cache built from other blocks?)")
        return torch.from_numpy(np.ascontiguousarray(arr[idx])).to(device, non_blocking=True)

    def sample_expert(self, step: int) -> str:
        """The expert picked at `step` under "sample" weighting (same on every rank)."""
        g = torch.Generator().manual_seed(sample_seed(self.seed, step))
        return self.in_use[int(torch.randint(len(self.in_use), (1,), generator=g))]

    # -- step

    def loss_terms(
        self, model: MaskedLM, batch: dict[str, torch.Tensor], hidden: torch.Tensor, ctx: dict
    ) -> dict[str, torch.Tensor]:
        if not self.active:
            return {"kd": torch.zeros((), device=hidden.device)}
        step = int(batch["step"]) if "step" in batch else int(self.kd_step)
        if self.training:
            self.kd_step += 1
        if self.cfg.weighting == "sample":
            picked, w = [self.sample_expert(step)], 1.0
        else:
            picked, w = self.in_use, 1.0 / len(self.in_use)
        z = hidden[:, 0]
        total = torch.zeros((), device=hidden.device)
        for task in picked:
            s = self.heads[task](z.to(self.heads[task].weight.dtype))
            t = self.teacher_logits(task, batch["block_index"], hidden.device)
            lk = kd_loss(s, t, self.cfg.temperature, self.specs[task].is_regression)
            ctx[f"kd/{task}"] = lk.detach()
            total = total + w * lk
        for task in self.in_use:             # keep every trainable head in the graph (DDP)
            if task not in picked:
                total = total + 0.0 * sum(p.sum() for p in self.heads[task].parameters())
        return {"kd": self.cfg.lambda_kd * total}
