"""Validation before any expensive work, and the plan it yields (what the run will do).

`prepare` checks every input that can be checked without training (config, every data file,
the model's position budget, method-specific inputs) and raises InputError on the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from components.config import Config
from components.data.domains import Domain, DomainSummary, localize_corpus, resolve_domain, validate_domain
from components.errors import InputError
from components.models.head_warmup import stage0_mode
from components.methods.registry import validate_methods
from components.models.loading import load_tokenizer, resolve_model
from components.models.task_model import TaskInfo
from components.pretrain.loop import steps_for
from components.progress import Progress
from components.run.results_mirror import open_destination


@dataclass
class Plan:
    """What validation found and what the run will do."""

    domains: list[Domain]
    summaries: list[DomainSummary]
    tokenizer: object
    steps: int
    cells: list[tuple[int, str, int]] = field(default_factory=list)

    def describe(self, cfg: Config) -> str:
        p, f = cfg.pretrain, cfg.finetune
        names = [d.name for d in self.domains]
        lines = [f"plan: {len(names)} domains in order {', '.join(names)}; method '{cfg.methods.name}'",
                 f"  stage 0: base model {cfg.model.name} ({stage0_mode(cfg.model)}"
                 + (", shipped weights when the recipe matches)" if stage0_mode(cfg.model) == "rewarm"
                    else f", MLM-head warm-up: {cfg.model.head_warmup.mode})")]
        for i, s in enumerate(self.summaries, 1):
            lines.append(f"  stage {i}: pre-train on {s.name} ({s.n_docs:,} docs of {s.corpus_source}) for {self.steps} steps "
                         f"x {p.batch_size * p.grad_accum} blocks/worker of {cfg.model.block_size} tokens")
        lines.append(f"  anytime cells: {len(self.cells)} = {len(names) + 1} rows x {len(names)} tasks x "
                     f"{len(f.seeds)} seeds; each {f.cpus_per_cell} CPU, {f.gpus_per_cell} GPU")
        lines.append(f"  pre-training: {p.num_workers} workers x {p.cpus_per_worker} CPU"
                     f"{' + 1 GPU' if p.use_gpu else ''}; DDP backend {'nccl' if p.use_gpu else 'gloo'}")
        for s in self.summaries:
            lines.append(f"  task {s.name}: " + ", ".join(f"{k} {v}" for k, v in s.examples.items())
                         + f"; {'pair' if s.is_pair else 'single'} text; "
                         + ("regression" if s.is_regression else f"{len(s.label_names)} labels"))
        return "\n".join(lines)


def check_blocks(cfg: Config, domain: str, n_train: int, n_heldout: int) -> None:
    """After tokenization: every pre-training worker needs a block of its own (an empty shard
    gives a NaN loss), and the held-out diagnostics need at least one block."""
    workers = cfg.pretrain.num_workers
    if n_train < workers:
        raise InputError(f"domain '{domain}': {n_train} training block(s) of {cfg.model.block_size} tokens for "
                         f"pretrain.num_workers {workers}; every worker needs at least one (lower "
                         "pretrain.num_workers or model.block_size, or give more text)")
    if n_heldout == 0:
        raise InputError(f"domain '{domain}': no held-out block of {cfg.model.block_size} tokens for the "
                         "held-out diagnostics (raise data.heldout_fraction or give more text)")


def prepare(cfg: Config) -> Plan:
    """Validate everything that can be checked without training; raise InputError on the first problem."""
    domains = [localize_corpus(resolve_domain(d), cfg.data.cache_dir) for d in cfg.domains]
    progress = Progress("validate", len(domains), "domains (every file read in full)", every_s=5.0)
    summaries = []
    for i, d in enumerate(domains, 1):
        summaries.append(validate_domain(d))
        progress.update(i, d.name)
    progress.close()
    tokenizer = load_tokenizer(cfg.model.name)
    model_config = AutoConfig.from_pretrained(resolve_model(cfg.model.name))
    max_pos = model_config.max_position_embeddings
    if cfg.model.block_size > max_pos - 2 or cfg.finetune.max_length > max_pos - 2:
        raise InputError(f"model.block_size / finetune.max_length: at most {max_pos - 2} for {cfg.model.name}")
    if stage0_mode(cfg.model) == "rewarm":
        if not Path(cfg.model.rewarm.corpus).is_file():
            raise InputError(f"model.rewarm.corpus: file not found: {cfg.model.rewarm.corpus}")
        if cfg.model.rewarm.block_size > max_pos - 2:
            raise InputError(f"model.rewarm.block_size: at most {max_pos - 2} for {cfg.model.name}")
    elif cfg.model.head_warmup.mode != "never" and not Path(cfg.model.head_warmup.corpus).is_file():
        raise InputError(f"model.head_warmup.corpus: file not found: {cfg.model.head_warmup.corpus}")
    tasks = [TaskInfo(d.name, None if s.is_regression else s.label_names, d.verbalizers)
             for d, s in zip(domains, summaries)]
    validate_methods(cfg, model_config, tasks, tokenizer)
    if cfg.ray.results_uri:
        open_destination(cfg.ray.results_uri)
    names = [d.name for d in domains]
    cells = [(i, t, s) for i in range(len(names) + 1) for t in names for s in cfg.finetune.seeds]
    return Plan(domains, summaries, tokenizer, steps_for(cfg, cfg.pretrain.num_workers), cells)
