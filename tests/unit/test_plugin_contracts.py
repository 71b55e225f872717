"""The plug-in contracts: a method is one plug-in class plus its registration, and the run and
sweep layers never name a method."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM

from components.config import REPO_ROOT, load_config
from components.finetune.plugin import FinetunePlugin
from components.methods import registry
from components.models.task_model import TaskBatch, TaskInfo
from components.pretrain.loop import LocalSession, run_stage
from components.pretrain.plugin import PretrainPlugin
from tests.helpers.stage import make_spec

METHOD_MODULES = {"components.pretrain.hprompt", "components.pretrain.expert_kd", "components.pretrain.experts",
                  "components.finetune.coca", "components.finetune.repcali", "components.finetune.prompts",
                  "components.finetune.verbalizers", "components.models.hypernetwork"}
METHOD_KEYS = {"hprompt", "distill", "coca", "repcali"}


@pytest.mark.parametrize("layer", ["run", "sweep"])
def test_run_and_sweep_name_no_method(layer):
    """No import of a method's module and no read of a method's config section (`cfg.methods.hprompt`,
    `cfg.finetune.coca`, ...) in components/run or components/sweep."""
    found = []
    for path in sorted((REPO_ROOT / "components" / layer).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in METHOD_MODULES:
                found.append(f"{path.name}: imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in METHOD_KEYS:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []


class Shift(FinetunePlugin):
    """A test method: a learned prompt vector and a calibration that adds a constant."""

    name = "shift"

    def __init__(self, d: int):
        super().__init__()
        self.prompt = torch.nn.Parameter(torch.ones(1, 1, d))

    @classmethod
    def enabled(cls, cfg) -> bool:
        return True

    @classmethod
    def build(cls, cfg, mlm, task, tokenizer, base_weights, plugin_state):
        return cls(mlm.hidden_size), ["shift built"]

    def prefix(self, batch):
        return self.prompt.expand(batch.input_ids.shape[0], -1, -1)

    def calibrate(self, hidden):
        return hidden + 1.0

    def loss_terms(self, model, batch, out):
        return {"norm": out.embedding.pow(2).mean()}


def test_a_registered_finetune_plugin_changes_the_forward_through_its_hooks(monkeypatch, tiny_model_dir):
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"], [f"model.name={tiny_model_dir}"])
    weights = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).state_dict()
    info = TaskInfo("t", ["a", "b"])
    plain, plugins, _ = registry.build_task_model(cfg, weights, info, None)
    monkeypatch.setattr(registry, "FINETUNE_PLUGINS", (*registry.FINETUNE_PLUGINS, Shift))
    model, plugins, notes = registry.build_task_model(cfg, weights, info, None)
    assert [type(p) for p in plugins] == [Shift] and "shift built" in notes
    assert any(n.startswith("plugins.0.") for n, _ in model.named_parameters())  # trained with the model
    batch = TaskBatch(torch.randint(5, 40, (3, 8)), torch.ones(3, 8, dtype=torch.long), torch.tensor([0, 1, 0]))
    model.head.load_state_dict(plain.head.state_dict())
    torch.manual_seed(0)
    out = model.eval()(batch)
    torch.manual_seed(0)
    ref = plain.eval()(batch)
    assert not torch.allclose(out.raw_embedding, ref.raw_embedding)           # the prompt reached the encoder
    torch.testing.assert_close(out.embedding, out.raw_embedding + 1.0)       # the calibrate hook ran
    assert set(plugins[0].loss_terms(model, batch, out)) == {"norm"}


class Payload(PretrainPlugin):
    """A test method: prepare_stage's payload reaches build on the worker; meta round-trips."""

    name = "payload"
    seen: dict = {}

    def __init__(self, value: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(value))

    @classmethod
    def enabled(cls, cfg) -> bool:
        return True

    @classmethod
    def build(cls, cfg, model, payload):
        Payload.seen = dict(payload)
        return cls(payload["value"])

    def meta(self) -> dict:
        return {"value": float(self.scale.detach())}

    def loss_terms(self, model, batch, hidden, ctx):
        return {"zero": 0.0 * self.scale}


def test_a_registered_pretrain_plugin_gets_its_payload_and_saves_its_meta(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setattr(registry, "PRETRAIN_PLUGINS", (Payload,))
    spec = make_spec(tiny_model_dir)
    spec.payload = {"payload": {"value": 0.5, "array": np.arange(3)}}
    session = LocalSession(tmp_path / "s")
    run_stage(spec, session, registry.build_pretrain_plugins)
    assert Payload.seen["value"] == 0.5 and Payload.seen["array"].tolist() == [0, 1, 2]
    meta = json.loads((session.checkpoints[-1] / "meta.json").read_text())
    assert meta["plugin_meta"] == [{"value": 0.5}]
    assert session.metrics[-1]["loss/payload/zero"] == 0.0
