"""Linear probes: a known separable answer, ridge for regression, frozen deterministic features,
and the additive anytime.json keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.eval.probe import C_GRID, fit_probe, probe_features
from components.eval.report import write_anytime_outputs


def _clusters(n: int, rng: np.random.Generator, centers: np.ndarray, noise: float):
    y = rng.integers(0, len(centers), n)
    return centers[y] + noise * rng.standard_normal((n, centers.shape[1])), y


def test_probe_recovers_a_linearly_separable_task():
    rng = np.random.default_rng(0)
    centers = 4.0 * np.eye(3, 16)  # three classes, well apart in 16 dimensions
    x, y = {}, {}
    for split, n in (("train", 150), ("dev", 60), ("test", 90)):
        x[split], y[split] = _clusters(n, rng, centers, noise=0.5)
    out = fit_probe(x, y, regression=False)
    assert out["accuracy"] == 1.0 and out["macro_f1"] == 1.0
    assert out["reg"] in C_GRID and out["dev"] == 1.0


def test_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    x = {s: rng.standard_normal((n, 8)) for s, n in (("train", 200), ("dev", 100), ("test", 400))}
    y = {s: rng.integers(0, 2, len(v)) for s, v in x.items()}
    assert abs(fit_probe(x, y, regression=False)["accuracy"] - 0.5) < 0.1


def test_ridge_probe_for_regression():
    rng = np.random.default_rng(2)
    w = rng.standard_normal(8)
    x = {s: rng.standard_normal((n, 8)) for s, n in (("train", 200), ("dev", 50), ("test", 100))}
    y = {s: v @ w + 0.05 * rng.standard_normal(len(v)) for s, v in x.items()}
    out = fit_probe(x, y, regression=True)
    assert out["accuracy"] == out["macro_f1"] and out["accuracy"] > 0.99


def test_probe_features_are_the_frozen_pooled_embedding(tiny_model_dir):
    from components.models.task_model import TaskModel
    from components.models.loading import load_masked_lm
    from components.models.masked_lm import MaskedLM

    hf, _ = load_masked_lm(str(tiny_model_dir))
    model = TaskModel(MaskedLM(hf), num_labels=3)
    model.train()  # probe_features must switch dropout off itself
    ids = torch.randint(1000, 2000, (5, 12))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(5, dtype=torch.long)}
    a = probe_features(model, data, batch_size=2, device=torch.device("cpu"))
    b = probe_features(model, data, batch_size=5, device=torch.device("cpu"))
    assert a.shape == (5, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():
        cls = model.mlm.encode(model.mlm.embed(ids), torch.ones_like(ids))[:, 0]
    np.testing.assert_allclose(a, cls.numpy(), atol=1e-5)


def test_length_sorted_inference_returns_examples_in_data_order(tiny_model_dir):
    """Batches run shortest-first (less padding) yet every example's features come back in its own
    row, equal to that example encoded alone."""
    from components.models.loading import load_masked_lm
    from components.models.masked_lm import MaskedLM
    from components.models.task_model import TaskModel

    hf, _ = load_masked_lm(str(tiny_model_dir))
    model = TaskModel(MaskedLM(hf), num_labels=3)
    lengths = [12, 3, 9, 5, 12, 2, 7]
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n], mask[i, :n] = torch.randint(1000, 2000, (n,)), 1
    data = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(lengths))}
    together = probe_features(model, data, batch_size=3, device=torch.device("cpu"))
    for i in range(len(lengths)):
        alone = probe_features(model, {k: v[i:i + 1] for k, v in data.items()}, 1, torch.device("cpu"))
        assert np.allclose(together[i], alone[0], atol=1e-5)


def test_mean_pooling_averages_the_real_tokens_only(tiny_model_dir):
    from components.config import load_config
    from components.methods.registry import pooling_for
    from components.models.loading import load_masked_lm
    from components.models.masked_lm import MaskedLM
    from components.models.task_model import TaskModel

    hf, _ = load_masked_lm(str(tiny_model_dir))
    model = TaskModel(MaskedLM(hf), num_labels=3, pooling="mean")
    ids = torch.randint(1000, 2000, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # the second example has 4 padding positions
    data = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(2, dtype=torch.long)}
    feats = probe_features(model, data, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        h = model.mlm.encode(model.mlm.embed(ids), mask)
    np.testing.assert_allclose(feats[0], h[0].mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(feats[1], h[1, :6].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(feats[1], h[1].mean(0).numpy(), atol=1e-3)  # padding would change it
    assert pooling_for(load_config(["pipelines/configs/default.yaml"], ["finetune.pooling=mean"])) == "mean"
    coca = ["finetune.pooling=mean", "finetune.coca.enabled=true"]
    assert pooling_for(load_config(["pipelines/configs/default.yaml"], coca)) == "mean"  # CoCa's task head: finetune.pooling
    slot = load_config(["pipelines/configs/default.yaml"], [*coca, "finetune.coca.task_head_at_slot=true"])
    assert pooling_for(slot) == "mask"  # a plug-in whose task head reads the template's mask slot wins


def test_probe_matrices_are_additive_keys_of_anytime_json(tmp_path):
    domains = ["d1", "d2"]
    cells = [{"stage": i, "task": t, "seed": s, "accuracy": 0.5 + 0.1 * i, "macro_f1": 0.4}
             for i in range(3) for t in domains for s in (0, 1)]
    probes = [{"stage": i, "task": t, "seed": 0, "accuracy": 0.6 + 0.05 * i + (0.1 if t == "d2" else 0),
               "macro_f1": 0.5} for i in range(3) for t in domains]
    out = write_anytime_outputs(tmp_path, domains, cells, [0, 1], {})
    assert "probe_accuracy" not in out  # without probes, the contract is unchanged
    out = write_anytime_outputs(tmp_path, domains, cells, [0, 1], {}, probes=probes)
    saved = json.loads((tmp_path / "anytime.json").read_text())
    assert saved["accuracy"] == out["accuracy"] and len(saved["probe_accuracy"]) == 3
    assert saved["probe_accuracy"][2] == pytest.approx([0.7, 0.8])
    assert saved["metrics"]["probe_accuracy"]["A_all"] == pytest.approx(np.mean([0.65, 0.75, 0.7, 0.8]))
    assert set(saved["metrics"]) == {"accuracy", "macro_f1", "probe_accuracy", "probe_macro_f1"}
    assert saved["metrics_ci95"]["probe_macro_f1"]["A_all"] is None
    report = (tmp_path / "report.md").read_text()
    assert "## Linear-probe matrix" in report and "0.8000" in report


def _anytime(tmp_path, name: str, shift: float, probe: bool) -> Path:
    domains = ["d1", "d2"]
    cells = [{"stage": i, "task": t, "seed": 0, "accuracy": 0.5 + shift, "macro_f1": 0.4}
             for i in range(3) for t in domains]
    probes = [{"stage": i, "task": t, "seed": 0, "accuracy": 0.6 + shift + 0.01 * i, "macro_f1": 0.5}
              for i in range(3) for t in domains]
    run = tmp_path / name
    write_anytime_outputs(run, domains, cells, [0], {}, probes=probes if probe else None)
    return run


def test_results_table_and_compare_read_the_probe_scores(tmp_path):
    from components.eval.compare import compare_runs
    from components.eval.results_table import available_scores, build_results, results_markdown

    runs = {m: {s: json.loads((_anytime(tmp_path, f"{m}{s}", 0.02 * s + (0.05 if m == "hprompt" else 0), True)
                               / "anytime.json").read_text()) for s in (0, 1)} for m in ("ncl", "hprompt")}
    assert available_scores(runs) == ["accuracy", "macro_f1", "probe_accuracy", "probe_macro_f1"]
    results = build_results(runs, [0, 1])
    paired = results["scores"]["probe_accuracy"]["paired_vs_reference"]["hprompt"]["A_all"]
    assert paired["mean"] == pytest.approx(0.05)
    assert "## Linear-probe accuracy" in results_markdown(results)
    only = build_results(runs, [0, 1], scores_wanted=["probe_accuracy"])
    assert list(only["scores"]) == ["probe_accuracy"]
    runs["ncl"][1] = json.loads((_anytime(tmp_path, "old", 0.0, False) / "anytime.json").read_text())
    assert available_scores(runs) == ["accuracy", "macro_f1"]  # one run without probes: fine-tuning scores only
    cmp = compare_runs([tmp_path / "ncl0", tmp_path / "hprompt0"], score="probe_accuracy")
    assert cmp["runs"][1]["metrics"]["A_all"] - cmp["runs"][0]["metrics"]["A_all"] == pytest.approx(0.05)
