"""HPrompt at fine-tuning: every input gets the prompts that the hypernetwork trained so far
generates for it (a model hook, no loss term),

    P(x) = Hypernet(q(x)),   q(x) = the frozen stage-0 encoder's mean-pooled states of x,

and the backbone optionally frozen (`methods.hprompt.freeze_backbone_at_finetune`). Absent at
row 0, where no hypernetwork has been trained yet (no plug-in state), and everywhere under
`methods.hprompt.prompts_at_finetune: false` (HPrompt then acts through pre-training only).
"""

from __future__ import annotations

import torch

from components.config import Config
from components.finetune.plugin import FinetunePlugin
from components.models.hypernetwork import PromptGenerator, build_prompt_generator
from components.models.loading import masked_lm_from_state
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskBatch


class GeneratedPrompts(FinetunePlugin):
    name = "prompts"

    def __init__(self, generator: PromptGenerator):
        super().__init__()
        self.generator = generator

    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return cfg.methods.hprompt.enabled and cfg.methods.hprompt.prompts_at_finetune

    @classmethod
    def build(cls, cfg: Config, mlm: MaskedLM, task, tokenizer, base_weights, plugin_state):
        if plugin_state is None:
            return None, []
        h = cfg.methods.hprompt
        base = MaskedLM(masked_lm_from_state(cfg.model.name, base_weights))
        generator = build_prompt_generator(base, h.prompt_length, h.rank, plugin_state,
                                           h.freeze_hypernet_at_finetune, copy_model=False)
        if h.freeze_backbone_at_finetune:
            mlm.requires_grad_(False)
        return cls(generator), []

    def prefix(self, batch: TaskBatch) -> torch.Tensor:
        return self.generator(batch.input_ids, batch.attention_mask)
