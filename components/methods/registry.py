"""From the config's method switches to plug-ins on the two loops.

Pre-training: HPrompt-CPT (`methods.hprompt`) and UEGP/MoEGP (`methods.distill`) plug into the
one MLM loop; all off = NCL. Fine-tuning: prompts from the frozen hypernetwork (when the run
pre-trained with HPrompt), RepCali (`finetune.repcali`) and CoCa (`finetune.coca`) plug into
the one fine-tuning loop; all off = plain fine-tuning with a [CLS] head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from components.config import Config
from components.finetune.coca import Coca
from components.finetune.plugin import FinetunePlugin
from components.finetune.repcali import build_repcali
from components.finetune.verbalizers import verbalizer_ids
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskModel
from components.pretrain.expert_kd import ExpertKDPlugin
from components.pretrain.hprompt import HPromptPlugin
from components.pretrain.hypernetwork import build_prompt_generator
from components.pretrain.plugin import PretrainPlugin

if TYPE_CHECKING:
    from components.pretrain.loop import StageSpec


def distill_active(cfg: Config) -> bool:
    return cfg.methods.distill.mode != "none" and cfg.methods.distill.lambda_kd > 0


def build_pretrain_plugins(spec: "StageSpec", model: MaskedLM) -> list[PretrainPlugin]:
    """The stage's plug-ins, carrying over the previous stage's plug-in state (hypernetwork,
    query statistics, prototypes, student heads)."""
    cfg = spec.config
    plugins: list[PretrainPlugin] = []
    if cfg.methods.hprompt.enabled:
        base = MaskedLM(masked_lm_from_state(cfg.model.name, spec.base_weights))
        plugins.append(HPromptPlugin(cfg.methods.hprompt, base, block_size=cfg.model.block_size, copy_base=False))
    if distill_active(cfg):
        plugins.append(ExpertKDPlugin(cfg.methods.distill, model.hidden_size, spec.experts, seed=cfg.seed))
    if spec.prev_plugin_state is not None:
        nn.ModuleList(plugins).load_state_dict(spec.prev_plugin_state)
        for p, meta in zip(plugins, spec.prev_plugin_meta or []):
            if hasattr(p, "load_meta"):
                p.load_meta(meta)
    return plugins


@dataclass
class TaskInfo:
    name: str
    label_names: list[str] | None   # None for regression
    verbalizers: dict[str, str] | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


def pooling_for(cfg: Config) -> str:
    """CoCa reads the task embedding at a template's mask slot; otherwise at [CLS]."""
    return "mask" if cfg.finetune.coca.enabled else "cls"


def build_task_model(
    cfg: Config,
    weights: dict[str, torch.Tensor],
    task: TaskInfo,
    tokenizer: PreTrainedTokenizerBase,
    base_weights: dict[str, torch.Tensor] | None = None,
    plugin_state: dict[str, torch.Tensor] | None = None,
) -> tuple[TaskModel, list[FinetunePlugin], list[str]]:
    """A TaskModel on the stage's weights with the configured fine-tuning methods, its loss
    plug-ins, and notes for the log (verbalizer choices, block sizes)."""
    f = cfg.finetune
    mlm = MaskedLM(masked_lm_from_state(cfg.model.name, weights))
    notes: list[str] = []
    calibration = None
    if f.repcali.enabled:
        calibration = build_repcali(f.repcali, mlm.backbone)
        share = calibration.num_parameters() / sum(p.numel() for p in mlm.parameters())
        notes.append(f"RepCali rank {f.repcali.rank}: {calibration.num_parameters():,} parameters "
                     f"({100 * share:.3f}% of the model)")
    prompter = None
    if cfg.methods.hprompt.enabled and plugin_state is not None:
        base = MaskedLM(masked_lm_from_state(cfg.model.name, base_weights))
        prompter = build_prompt_generator(base, cfg.methods.hprompt.prompt_length, cfg.methods.hprompt.rank,
                                          plugin_state, cfg.methods.hprompt.freeze_hypernet_at_finetune,
                                          copy_model=False)
        if cfg.methods.hprompt.freeze_backbone_at_finetune:
            mlm.requires_grad_(False)
    verbalizers = None
    plugins: list[FinetunePlugin] = []
    if f.coca.enabled:
        index = [d.name for d in cfg.domains].index(task.name)
        verbalizers, vnotes = verbalizer_ids(task.label_names or [], tokenizer, task.verbalizers,
                                             where=f"domains[{index}].verbalizers")
        notes += vnotes
        plugins.append(Coca(f.coca, task.num_labels, task.name))
    model = TaskModel(mlm, task.num_labels, pooling_for(cfg), calibration, prompter,
                      calibrate_mlm_head=f.repcali.enabled and f.repcali.mlm_head, verbalizer_ids=verbalizers)
    if cfg.methods.distill.warm_start_head and plugin_state is not None:
        notes += warm_start_from_student(model, task.name, plugin_state)
    return model, plugins, notes


def warm_start_from_student(model: TaskModel, task: str, plugin_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the distilled student head of `task` (pre-training plug-in state) into the task head."""
    key = next((k for k in plugin_state if k.endswith(f"heads.{task}.weight")), None)
    if key is None:
        return [f"no distilled student head for '{task}' at this stage: task head starts fresh"]
    with torch.no_grad():
        model.head.weight.copy_(plugin_state[key])
        model.head.bias.copy_(plugin_state[key[:-len("weight")] + "bias"])
    return [f"task head warm-started from the distilled student head ({key})"]
