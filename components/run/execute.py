"""The main job: stage 0 (base model) .. stage N, anytime fine-tuning after every stage.

    validate config, every data file, the model           (before any expensive work)
    tokenize corpora (cached), make the stage-0 model      (MLM-head warm-up, cached)
    row 0: fine-tune the base model on every task          (Ray tasks; models kept for plug-ins that need them)
    for t = 1..N: pre-train on domain t (Ray Train)  ->  row t on every task (Ray tasks)
    metrics, anytime.json/.csv, heatmap, report.md, W&B

A finished stage or cell is never redone: running the same command again skips them and
resumes an interrupted stage from its last Ray Train checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import ray
from safetensors.torch import load_file

from components.checkpoint import load_tree, publish_dir, staging_dir
from components.config import Config, stored_dict
from components.data.corpus_cache import CorpusBlocks, load_corpus_blocks, task_fingerprints, tokenizer_fingerprint
from components.errors import InputError
from components.eval.matrix import build_matrix
from components.eval.metrics import all_metrics, partial_metrics
from components.io import append_jsonl, atomic_write_json, read_json, read_jsonl, redact
from components.lock import hold
from components.methods.registry import (build_task_model, cells_need_base_weights, pretrain_plugins,
                                         pretraining_uses_row0_models)
from components.models.head_warmup import prepare_base_model, weights_fingerprint
from components.models.precision import resolve_precision
from components.pretrain.loop import StageSpec
from components.pretrain.plugin import StageInfo, Tokens
from components.progress import Progress, RunProgress
from components.run.cells import CellSpec
from components.run.faults import cell_fault, stage_fault
from components.run.plan import Plan, check_blocks
from components.run.resources import check_cluster
from components.run.ray_stage import train_stage
from components.run.report import stage0_summary, write_report
from components.run.results_mirror import ResultsMirror
from components.run.run_dir import RunDir, check_same_run, git_sha, hardware, versions, write_config_and_manifest
from components.run.tasks import (OUTSIDE_ANY_PLACEMENT_GROUP, call_task, cell_task, cell_threads,
                                  diagnostics_task, init_ray, probe_task)
from components.tracking.wandb_tracker import Tracker


def _stage_train_subset(blocks: np.ndarray, needed: int, seed: int) -> np.ndarray:
    """The blocks a stage can use within its budget: all of them, or a seeded random subset
    of `needed` blocks (sampling without replacement over the stage's budget)."""
    if len(blocks) <= needed:
        return blocks
    rows = np.sort(np.random.default_rng(seed).permutation(len(blocks))[:needed])
    return blocks[rows]


class Pipeline:
    """`shared_stages`: read (and train if missing) the pre-training stages there instead of in
    `run_dir` (sweep trials that only change fine-tuning knobs). `on_row(stage, metrics)` is
    called after each anytime row with the partial-matrix metrics (sweeps report them to Tune).
    `pretrain_only`: train the stages, fine-tune nothing. It is the plug-ins' `Driver`
    (components.pretrain.plugin): run_root, tokens, tokenizer, build_task_model, base_weights, run_task."""

    build_task_model = staticmethod(build_task_model)

    def __init__(self, cfg: Config, run_dir: Path, plan: Plan, shared_stages: Path | None = None,
                 on_row=None, pretrain_only: bool = False):
        self.cfg, self.plan, self.run = cfg, plan, RunDir(run_dir, shared_stages)
        self.on_row, self.pretrain_only = on_row, pretrain_only
        self.names = [d.name for d in plan.domains]
        self.run_root = self.run.root
        self.tokenizer = tok = plan.tokenizer
        self.tokens = Tokens(len(tok), tok.mask_token_id, tok.pad_token_id, list(tok.all_special_ids))
        self.tracker: Tracker | None = None
        self.blocks: dict[str, CorpusBlocks] = {}
        self.pending: dict = {}          # ObjectRef -> (stage, task, seed); a probe row's is (stage, None, None)
        self.mirror: ResultsMirror | None = None
        self.rows: dict[int, Progress] = {}      # per anytime row: cells done / submitted
        self.progress: RunProgress | None = None
        self.keepers: dict[str, list] = {}       # task -> plug-in classes receiving row 0's first-seed model

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg, run = self.cfg, self.run
        hold(run.root)  # a sweep trial's directory too; the CLI took the run directory's lock already
        check_same_run(run, cfg)
        for d in self.plan.domains:
            b = load_corpus_blocks(d, self.plan.tokenizer, cfg.model.block_size, cfg.data.cache_dir,
                                   cfg.data.heldout_fraction, cfg.data.max_corpus_docs, cfg.data.max_doc_chars)
            self.blocks[d.name] = b
            if b.cache_hit:  # else the tokenizer's own lines said it
                print(f"data {d.name}: {len(b.train):,} train / {len(b.heldout):,} held-out blocks (cache hit)", flush=True)
            check_blocks(cfg, d.name, len(b.train), len(b.heldout))
        init_ray(cfg)
        check_cluster(cfg)  # an impossible request is an error here, not a placement group waiting forever
        manifest = {
            "git_sha": git_sha(), "versions": versions(), "seed": cfg.seed, "seeds": cfg.finetune.seeds,
            "domain_order": self.names, "method": cfg.methods.name,
            "tokenizer_fingerprint": tokenizer_fingerprint(self.plan.tokenizer),
            "data": {d.name: {"corpus": self.blocks[d.name].fingerprint, **task_fingerprints(d)}
                     for d in self.plan.domains},
            "hardware": hardware(ray.cluster_resources()),
            "precision": {  # as resolved on the driver's hardware; cells record their own ("precision")
                "pretrain": resolve_precision(cfg.pretrain.precision, "cuda" if cfg.pretrain.use_gpu else "cpu"),
                "finetune": resolve_precision(cfg.finetune.precision, "cuda" if cfg.finetune.gpus_per_cell > 0 else "cpu")},
        }
        write_config_and_manifest(run, cfg, manifest)
        cells = [] if self.pretrain_only else self.plan.cells
        self.progress = RunProgress(len(self.names), len(cells),
                                    int(ray.cluster_resources().get("CPU", 1) // cfg.finetune.cpus_per_cell),
                                    cells_done=sum(run.cell(*c).is_file() for c in cells))
        self.tracker = Tracker(cfg.tracking, run.root, f"{cfg.name}-{run.root.name}",
                               {"config": stored_dict(cfg), "manifest": manifest})
        if cfg.ray.results_uri:
            self.mirror = ResultsMirror(run.root, cfg.ray.results_uri)

    def sync_results(self) -> None:
        """Copy new or changed run files to `ray.results_uri` (when set). A failed copy does not
        stop the run (the run directory holds every result); the next sync retries it."""
        if self.mirror is None:
            return
        try:
            n = self.mirror.sync()
        except OSError as exc:
            print(f"warning: results copy to {redact(self.mirror.uri)} failed, retried at the next sync: "
                  f"{redact(str(exc).splitlines()[0])}", flush=True)
            return
        if n:
            print(f"results: {n} file(s) copied to {redact(self.mirror.uri)}", flush=True)

    def base_stage(self) -> None:
        final = self.run.stage(0, "base")
        if not (final / "model.safetensors").is_file():
            path, info = prepare_base_model(self.cfg.model, self.plan.tokenizer, Path(self.cfg.data.cache_dir),
                                            self.cfg.seed)
            tmp = staging_dir(final)
            shutil.copy(path, tmp / "model.safetensors")
            (tmp / "meta.json").write_text(json.dumps({"finished": True, "base": info}))
            atomic_write_json(self.run.base_info, info)  # first: a kill between the two leaves no model without it
            publish_dir(tmp, final)
        info = read_json(self.run.base_info)
        print(f"stage 0: {stage0_summary(info)}", flush=True)

    # ------------------------------------------------------------------ stages

    def weights(self, stage: int) -> dict:
        name = "base" if stage == 0 else self.names[stage - 1]
        return load_file(str(self.run.stage(stage, name) / "model.safetensors"))

    def plugin_state(self, stage: int) -> tuple[dict | None, list | None]:
        if stage == 0:
            return None, None
        d = self.run.stage(stage, self.names[stage - 1])
        if not (d / "plugins.safetensors").is_file():
            return None, None
        return load_tree(d, "plugins"), json.loads((d / "meta.json").read_text())["plugin_meta"]

    def stage_done(self, stage: int) -> bool:
        meta = self.run.stage(stage, self.names[stage - 1]) / "meta.json"
        return meta.is_file() and json.loads(meta.read_text()).get("finished", False)

    def base_weights(self) -> dict:
        return self.weights(0)

    def run_task(self, fn, *args):
        f = self.cfg.finetune
        return ray.get(call_task.options(num_cpus=f.cpus_per_cell, num_gpus=f.gpus_per_cell,
                                         scheduling_strategy=OUTSIDE_ANY_PLACEMENT_GROUP).remote(fn, *args))

    def pretrain_stage(self, index: int) -> None:
        cfg, domain = self.cfg, self.names[index - 1]
        if self.stage_done(index):
            print(f"stage {index} ({domain}): finished earlier, skipping", flush=True)
            self.progress.stage_finished(None)
            return
        p = cfg.pretrain
        total = self.plan.steps
        needed = total * p.batch_size * p.grad_accum * p.num_workers
        train = _stage_train_subset(self.blocks[domain].train, needed, cfg.seed + index)
        fingerprint = hashlib.sha256(train.tobytes()).hexdigest()
        stage = StageInfo(index=index, domain=domain, domains_seen=self.names[:index], domain_order=self.names,
                          work_dir=Path(cfg.data.cache_dir), world_size=p.num_workers)
        payload = {cls.name: cls.prepare_stage(cfg, stage, train, fingerprint, self) for cls in pretrain_plugins(cfg)}
        prev_state, prev_meta = self.plugin_state(index - 1)
        spec = StageSpec(config=cfg, stage=stage, tokens=self.tokens, init_weights=self.weights(index - 1),
                         train_blocks=train, total_steps=total, payload=payload, prev_plugin_state=prev_state,
                         prev_plugin_meta=prev_meta, fault=stage_fault(index))
        jsonl = self.run.metrics(f"pretrain_stage{index:02d}.jsonl")
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        storage = cfg.ray.storage_path or str(self.run.storage_path)
        run_key = hashlib.sha256(str(self.run.root).encode()).hexdigest()[:8]
        experiment = f"{self.run.root.name}-{run_key}-stage{index:02d}-{domain}"
        t0 = time.time()
        checkpoint = train_stage(spec, experiment, storage, jsonl)
        final = self.run.stage(index, domain)
        tmp = staging_dir(final)
        with checkpoint.as_directory() as src:
            for name in ("model.safetensors", "plugins.safetensors", "plugins.json", "meta.json"):
                shutil.copy(Path(src) / name, tmp / name)
        publish_dir(tmp, final)
        if not cfg.ray.storage_path:  # run-local Ray Train storage: nothing reads a published stage's from here on
            shutil.rmtree(Path(storage) / experiment, ignore_errors=True)
        print(f"stage {index} ({domain}): done in {time.time() - t0:.0f}s", flush=True)
        self.progress.stage_finished(time.time() - t0)
        self.progress.report()
        if self.tracker:
            self.tracker.log_steps(read_jsonl(jsonl))

    # ------------------------------------------------------------------ anytime rows

    def submit_row(self, stage: int) -> None:
        cfg = self.cfg
        f = cfg.finetune
        keep = {t: [cls for cls in pretrain_plugins(cfg) if cls.wants_cell_model(cfg, t, self)]
                for t in self.names} if stage == 0 else {}
        keep = {t: classes for t, classes in keep.items() if classes}
        self.keepers = keep
        todo = [(i, t, s) for (i, t, s) in self.plan.cells if i == stage and (
            not self.run.cell(i, t, s).is_file() or (t in keep and s == f.seeds[0]))]
        probes = [t for t in self.names if cfg.eval.probe and not self.run.probe(stage, t).is_file()]
        if not todo and not probes:
            return
        row_cells = [c for c in self.plan.cells if c[0] == stage]
        label = f"row {stage} ({'base' if stage == 0 else self.names[stage - 1]})"
        self.rows[stage] = Progress(label, len(row_cells), "cells done", start=len(row_cells) - len(todo), every_s=0.0)
        weights = self.weights(stage)
        fingerprint = weights_fingerprint(weights)
        state, _ = self.plugin_state(stage)
        refs = (ray.put(weights), ray.put(self.weights(0)) if cells_need_base_weights(cfg) else None,
                ray.put(state) if state is not None else None)
        if probes:  # one task per row: features once per (stage, task), shared by every seed
            ref = probe_task.options(num_cpus=f.cpus_per_cell, num_gpus=f.gpus_per_cell, max_retries=f.max_retries,
                                     retry_exceptions=[RuntimeError, OSError],
                                     scheduling_strategy=OUTSIDE_ANY_PLACEMENT_GROUP).remote(
                cfg, stage, refs[0], refs[1], refs[2], fingerprint, cell_threads(cfg), probes)
            self.pending[ref] = (stage, None, None)
        for (i, task, seed) in todo:
            spec = CellSpec(i, task, seed, fingerprint, keep_model=task in keep and seed == f.seeds[0],
                            fault_marker=cell_fault(i, task, seed))
            ref = cell_task.options(num_cpus=f.cpus_per_cell, num_gpus=f.gpus_per_cell, max_retries=f.max_retries,
                                     retry_exceptions=[RuntimeError, OSError],
                                     scheduling_strategy=OUTSIDE_ANY_PLACEMENT_GROUP).remote(
                cfg, spec, refs[0], refs[1], refs[2], cell_threads(cfg))
            self.pending[ref] = (i, task, seed)

    def collect(self, until_stage: int | None = None) -> None:
        """Wait for pending cells (all, or those of stages <= until_stage) and write their files."""
        wanted = [r for r, (i, _, _) in self.pending.items() if until_stage is None or i <= until_stage]
        while wanted:
            done, wanted = ray.wait(wanted, num_returns=1)
            i, task, seed = self.pending.pop(done[0])
            if task is None:
                records = ray.get(done[0])
                for r in records:
                    atomic_write_json(self.run.probe(i, r["task"]), r)
                print(f"row {i}: linear probe accuracy " + ", ".join(f"{r['task']} {r['accuracy']:.3f}"
                                                                     for r in records), flush=True)
                continue
            record = ray.get(done[0])
            state = record.pop("model_state", None)
            if state is not None:
                for cls in self.keepers.get(task, []):
                    cls.keep_cell_model(self.cfg, task, record, state, self)
            atomic_write_json(self.run.cell(i, task, seed), record)
            row = self.rows[i]
            row.update(row.done + 1, f"{task} seed {seed}: accuracy {record['accuracy']:.3f} "
                       f"macro-F1 {record['macro_f1']:.3f} ({record['wall_time_s']:.0f}s)")
            for note in record["notes"]:
                print(f"  note: {note}", flush=True)
            self.progress.cell_finished(record["wall_time_s"])
            if row.done == row.total:
                row.close()
                self.progress.report()

    def diagnostics(self, stage: int) -> None:
        path = self.run.metrics("stages.jsonl")
        if stage in {r["stage"] for r in read_jsonl(path)}:
            return
        heldout = {n: self.blocks[n].heldout[:self.cfg.pretrain.eval_blocks] for n in self.names}
        out = ray.get(diagnostics_task.options(num_cpus=self.cfg.finetune.cpus_per_cell,
                                                scheduling_strategy=OUTSIDE_ANY_PLACEMENT_GROUP).remote(
            self.cfg, self.weights(stage), heldout, self.tokens, cell_threads(self.cfg)))
        record = {"stage": stage, "row": "base" if stage == 0 else self.names[stage - 1], "domains": out}
        append_jsonl(path, record)
        losses = ", ".join(f"{n} {v['mlm_loss']:.3f}" for n, v in out.items())
        print(f"stage {stage}: held-out MLM loss {losses}", flush=True)
        if self.tracker:
            self.tracker.log_stage(stage, {f"{n}/{k}": v for n, m in out.items() for k, v in m.items()})

    def log_partial(self, stage: int) -> None:
        cells = self.cell_records()
        score = self.cfg.sweep.score  # the sweep objective's score; W&B gets it under its name
        a = build_matrix(cells, self.names, len(self.names), score)
        row = a[stage][~np.isnan(a[stage])]
        part = {"row_mean": float(row.mean()) if row.size else None, **partial_metrics(a, stage)}
        if stage == len(self.names):
            part.update(all_metrics(a))
        if self.tracker:
            self.tracker.log_stage(stage, {f"{score}/{k}": v for k, v in part.items() if v is not None})
        if self.on_row:
            self.on_row(stage, part)

    # ------------------------------------------------------------------ outputs

    def cell_records(self) -> list[dict]:
        return [read_json(p) for p in sorted((self.run.root / "cells").glob("*.json"))]

    def finish(self) -> dict:
        print("report: writing anytime.json/.csv, heatmaps, plots, report.md", flush=True)
        anytime = write_report(self.cfg, self.run)
        if self.tracker:
            self.tracker.log_matrix(anytime, self.run.root / "anytime_heatmap.png",
                                    sorted((self.run.root / "plots").glob("*.png")))
            self.tracker.finish()
        self.sync_results()
        return anytime

    def execute(self) -> dict | None:
        self.setup()
        self.base_stage()
        if self.pretrain_only:
            if pretraining_uses_row0_models(self.cfg):
                needs = [cls.name for cls in pretrain_plugins(self.cfg) if cls.uses_row0_models(self.cfg)]
                raise InputError(f"pretrain_only: pre-training plug-in(s) {', '.join(needs)} need row 0's "
                                 "fine-tuned models")
            for index in range(1, len(self.names) + 1):
                self.pretrain_stage(index)
                self.sync_results()
            if self.tracker:
                self.tracker.finish()
            return None
        self.diagnostics(0)
        self.submit_row(0)
        if pretraining_uses_row0_models(self.cfg) or not self.cfg.eval.asynchronous:
            self.collect(0)
            self.log_partial(0)
        for index in range(1, len(self.names) + 1):
            self.pretrain_stage(index)
            self.diagnostics(index)
            self.submit_row(index)
            if not self.cfg.eval.asynchronous:
                self.collect(index)
                self.log_partial(index)
            self.sync_results()
        self.collect()
        return self.finish()


