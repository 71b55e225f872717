"""torch.compile of the training steps: selection, equivalence with eager, no recompile per
step under changing shapes, and the eager fallback when compilation fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from components.config import FinetuneConfig
from components.finetune.loop import finetune
from components.methods.registry import build_pretrain_plugins
from components.models import compile as C
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskModel, batches
from components.pretrain.loop import LocalSession, run_stage
from tests.helpers.stage import make_spec
from tests.helpers.tiny import tiny_hf_mlm


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_auto_compiles_only_long_cuda_loops_and_explicit_choices_win():
    assert C.resolve_compile("auto", "cuda", C.AUTO_MIN_STEPS) is True
    assert C.resolve_compile("auto", "cuda", 40) is False  # the default budgets stay eager
    assert C.resolve_compile("auto", "cpu", 10**6) is False
    assert C.resolve_compile("always", "cpu", 1) is True
    assert C.resolve_compile("never", "cuda", 10**6) is False


def _stage(tmp_path, tiny_model_dir, compile_: str, name: str) -> LocalSession:
    session = LocalSession(tmp_path / name)
    run_stage(make_spec(tiny_model_dir, [f"pretrain.compile={compile_}"]), session, build_pretrain_plugins)
    return session


def test_compiled_stage_matches_eager(tmp_path, tiny_model_dir, monkeypatch):
    """Compiled steps (dynamo + AOT autograd; the aot_eager backend, because inductor's C++
    build takes many minutes on the 2-core CI machine) give every step's loss within 1e-4 of
    eager's (about 10.4 nats on the tiny model), and nothing is recompiled in 6 steps although
    every step masks a different number of positions (a recompile would raise: error_on_recompile,
    and the step would fall back to eager, which `compiled` records)."""
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(C, "BACKEND", counter)
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    eager = _stage(tmp_path, tiny_model_dir, "never", "eager")
    assert counter.frame_count == 0
    compiled = _stage(tmp_path, tiny_model_dir, "always", "compiled")
    assert [m["compiled"] for m in compiled.metrics] == [1] * 6
    assert [m["compiled"] for m in eager.metrics] == [0] * 6
    for a, b in zip(eager.metrics, compiled.metrics):
        assert abs(a["loss/mlm"] - b["loss/mlm"]) < 1e-4
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * a["grad_norm"]
    assert counter.frame_count > 0  # the encoder and the masked-only head (split by graph breaks at hidden[picked])


def _tiny_task_model() -> TaskModel:
    return TaskModel(MaskedLM(tiny_hf_mlm(60, max_positions=32)), num_labels=3)


def _task_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Examples of lengths 4..20: dynamically padded batches differ in length from step to step."""
    g = np.random.default_rng(seed)
    lengths = g.integers(4, 21, n)
    mask = torch.from_numpy((np.arange(20)[None, :] < lengths[:, None]).astype(np.int64))
    ids = torch.from_numpy(g.integers(5, 60, (n, 20))) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(g.integers(0, 3, n))}


def test_compiled_finetuning_matches_eager_without_recompiling_per_batch(monkeypatch):
    """dynamic=True: 8 steps over batches of at least 3 different padded lengths trace the forward
    once (dynamo may restart its first trace: at most 2 frames), never once per length; the dev
    curve's losses match eager within 1e-3 relative (measured on an AVX2 CPU: 0 to 2.6e-4, fp32
    rounding of the decomposed ops; a wrong compiled step differs by orders more)."""
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(C, "BACKEND", counter)
    train, dev, test = _task_data(32, 0), _task_data(12, 1), _task_data(12, 2)
    results = {}
    for mode in ("never", "always"):
        cfg = FinetuneConfig(epochs=2, batch_size=8, evals_per_epoch=4, compile=mode)
        results[mode] = finetune(_tiny_task_model(), [], train, dev, test, cfg, seed=0, device=torch.device("cpu"))
    order = np.random.default_rng(0).permutation(32)  # the loop's first epoch
    assert len({b.input_ids.shape[1] for b in batches(train, 8, order)}) >= 3  # padded lengths differ
    assert counter.frame_count <= 2
    eager, compiled = results["never"].dev_curve, results["always"].dev_curve
    assert [r["step"] for r in eager] == [r["step"] for r in compiled] == [1, 2, 3, 4, 5, 6, 7, 8]
    for a, b in zip(eager, compiled):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * abs(a["loss"])


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler on this machine (test)")


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, tiny_model_dir, monkeypatch, capfd):
    """A backend that fails: the stage still trains, each step exactly as eager does (the failed
    step is rerun from the same RNG state with cleared gradients), and one warning line says so."""
    eager = _stage(tmp_path, tiny_model_dir, "never", "eager")
    capfd.readouterr()
    monkeypatch.setattr(C, "BACKEND", _broken_backend)
    fallen = _stage(tmp_path, tiny_model_dir, "always", "fallen")
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING: torch.compile failed")]
    assert len(warnings) == 1, err
    assert "stage 1 pre-training step" in warnings[0] and "no C++ compiler" in warnings[0]
    assert [m["compiled"] for m in fallen.metrics] == [0] * 6
    assert [m["loss"] for m in fallen.metrics] == [m["loss"] for m in eager.metrics]
    assert [m["grad_norm"] for m in fallen.metrics] == [m["grad_norm"] for m in eager.metrics]


def test_step_errors_that_eager_raises_too_propagate(monkeypatch):
    monkeypatch.setattr(C, "BACKEND", "aot_eager")
    step = C.CompiledStep(torch.nn.Linear(2, 2), True, "test step")

    def bad(module):
        raise ValueError("a bug in the step itself")

    with pytest.raises(ValueError, match="bug in the step"):
        step(bad, lambda: None)
