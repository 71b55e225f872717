"""The one place that names every method: from the config's switches to plug-ins on the two
loops. Adding a method is its plug-in file plus one entry in PRETRAIN_PLUGINS or FINETUNE_PLUGINS.

Pre-training: HPrompt-CPT (`methods.hprompt`) and UEGP/MoEGP (`methods.distill`) plug into the
one MLM loop; all off = NCL. Fine-tuning: prompts from the hypernetwork trained so far (when the
run pre-trains with HPrompt), RepCali (`finetune.repcali`) and CoCa (`finetune.coca`) plug into
the one fine-tuning loop; all off = plain fine-tuning with a [CLS] head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from components.config import Config
from components.finetune.coca import Coca
from components.finetune.plugin import FinetunePlugin
from components.finetune.prompts import GeneratedPrompts
from components.finetune.repcali import RepCaliPlugin
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskInfo, TaskModel
from components.pretrain.expert_kd import ExpertKDPlugin
from components.pretrain.hprompt import HPromptPlugin
from components.pretrain.plugin import PretrainPlugin

if TYPE_CHECKING:
    from components.pretrain.loop import StageSpec

# Order = the order of their state in a checkpoint and of their hooks in a forward.
PRETRAIN_PLUGINS: tuple[type[PretrainPlugin], ...] = (HPromptPlugin, ExpertKDPlugin)
FINETUNE_PLUGINS: tuple[type[FinetunePlugin], ...] = (RepCaliPlugin, GeneratedPrompts, Coca)


def pretrain_plugins(cfg: Config) -> list[type[PretrainPlugin]]:
    """The switched-on pre-training plug-in classes."""
    return [cls for cls in PRETRAIN_PLUGINS if cls.enabled(cfg)]


def finetune_plugins(cfg: Config) -> list[type[FinetunePlugin]]:
    """The switched-on fine-tuning plug-in classes."""
    return [cls for cls in FINETUNE_PLUGINS if cls.enabled(cfg)]


def validate_methods(cfg: Config, model_config: Any, tasks: list[TaskInfo], tokenizer: PreTrainedTokenizerBase) -> None:
    """Every switched-on method's own checks (plan time, before any training)."""
    for cls in pretrain_plugins(cfg):
        cls.validate(cfg, model_config)
    for cls in finetune_plugins(cfg):
        cls.validate(cfg, tasks, tokenizer)


def pretraining_uses_row0_models(cfg: Config) -> bool:
    """Pre-training needs fine-tuned row-0 models (distillation's experts): row 0 runs first."""
    return any(cls.uses_row0_models(cfg) for cls in pretrain_plugins(cfg))


def cells_need_base_weights(cfg: Config) -> bool:
    """Cells need the stage-0 weights (the generated prompts' query encoder)."""
    return GeneratedPrompts in finetune_plugins(cfg)


def method_summary(cfg: Config) -> dict[str, Any]:
    """The method switches for the report's summary."""
    return {"hprompt": cfg.methods.hprompt.enabled, "distill": cfg.methods.distill.mode,
            "coca": cfg.finetune.coca.enabled, "repcali": cfg.finetune.repcali.enabled}


def build_pretrain_plugins(spec: "StageSpec", model: MaskedLM) -> list[PretrainPlugin]:
    """The stage's plug-ins, carrying over the previous stage's plug-in state (hypernetwork,
    query statistics, prototypes, student heads)."""
    cfg = spec.config
    plugins = [cls.build(cfg, model, spec.payload.get(cls.name, {})) for cls in pretrain_plugins(cfg)]
    if spec.prev_plugin_state is not None:
        nn.ModuleList(plugins).load_state_dict(spec.prev_plugin_state)
        for p, meta in zip(plugins, spec.prev_plugin_meta or []):
            p.load_meta(meta)
    return plugins


def pooling_for(cfg: Config) -> str:
    """A plug-in may read the task embedding at a template's mask slot (CoCa with
    `task_head_at_slot`); otherwise `finetune.pooling` ([CLS] or the mean over real tokens)."""
    return "mask" if any(cls.pools_at_slot(cfg) for cls in finetune_plugins(cfg)) else cfg.finetune.pooling


def templated(cfg: Config) -> bool:
    """Task inputs are wrapped in the default template with a mask slot (a plug-in reads the slot)."""
    return any(cls.reads_slot(cfg) for cls in finetune_plugins(cfg))


def build_task_model(
    cfg: Config,
    weights: dict[str, torch.Tensor],
    task: TaskInfo,
    tokenizer: PreTrainedTokenizerBase,
    base_weights: dict[str, torch.Tensor] | None = None,
    plugin_state: dict[str, torch.Tensor] | None = None,
) -> tuple[TaskModel, list[FinetunePlugin], list[str]]:
    """A TaskModel on the stage's weights with the switched-on fine-tuning plug-ins inside it,
    the plug-ins (their loss terms), and notes for the log (verbalizer choices, block sizes)."""
    mlm = MaskedLM(masked_lm_from_state(cfg.model.name, weights))
    notes: list[str] = []
    plugins: list[FinetunePlugin] = []
    for cls in finetune_plugins(cfg):
        plugin, more = cls.build(cfg, mlm, task, tokenizer, base_weights, plugin_state)
        notes += more
        if plugin is not None:
            plugins.append(plugin)
    model = TaskModel(mlm, task.num_labels, pooling_for(cfg), plugins)
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
