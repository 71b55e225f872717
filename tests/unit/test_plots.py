"""The run's pictures (plots/), their place in report.md, the one-seed report, compare --figure."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from components.config import REPO_ROOT
from components.eval.plots import score_bands, write_plots
from components.eval.report import write_anytime_outputs

REPO = REPO_ROOT
DOMAINS = ["news", "bio"]
ACC = {0: [[0.5, 0.4], [0.8, 0.5], [0.7, 0.9]], 1: [[0.6, 0.4], [0.9, 0.6], [0.7, 0.8]]}


def cells(seeds=(0, 1)):
    return [{"stage": i, "task": t, "seed": s, "accuracy": ACC[s][i][j], "macro_f1": 0.9 * ACC[s][i][j]}
            for s in seeds for i in range(3) for j, t in enumerate(DOMAINS)]


def fill_metrics(run: Path) -> None:
    """Per-step pre-training records (stage 2 resumed: step 4 twice) and held-out diagnostics."""
    m = run / "metrics"
    m.mkdir(parents=True)
    for stage, steps in ((1, [2, 4, 6]), (2, [2, 4, 4, 6])):
        (m / f"pretrain_stage{stage:02d}.jsonl").write_text(
            "".join(json.dumps({"stage": stage, "step": s, "total_steps": 6, "loss": 3.0 - 0.1 * s}) + "\n" for s in steps))
    (m / "stages.jsonl").write_text("".join(
        json.dumps({"stage": i, "row": r, "domains": {d: {"mlm_loss": 2.0 + 0.1 * i + j} for j, d in enumerate(DOMAINS)}}) + "\n"
        for i, r in enumerate(["base", *DOMAINS])))


def assert_image(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05, f"{path} is blank"


def test_run_plots_exist_are_images_and_are_in_the_report(tmp_path):
    fill_metrics(tmp_path)
    write_anytime_outputs(tmp_path, DOMAINS, cells(), [0, 1], {"method": "ncl"})
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["heldout_mlm_loss.png", "pretrain_loss.png", "task_scores.png"]  # no probe keys: no probe plot
    for name in names:
        assert_image(tmp_path / "plots" / name)
    md = (tmp_path / "report.md").read_text()
    for name in ["anytime_heatmap.png", *(f"plots/{n}" for n in names)]:
        assert f"]({name})" in md


def test_probe_matrix_drawn_when_present(tmp_path):
    anytime = {"domains": DOMAINS, "rows": ["base", *DOMAINS],
               "probe_accuracy": [[0.5, 0.6], [0.7, None], [0.8, 0.9]], "probe_macro_f1": [[0.4, 0.5], [0.6, 0.6], [0.7, 0.8]]}
    written = write_plots(tmp_path, anytime, [], [0])
    assert [p.name for p in written] == ["probe.png"]   # nothing else on disk: only the probe picture
    assert_image(written[0])


def test_score_bands_mean_and_t_interval():
    bands = score_bands(cells(), DOMAINS, [0, 1], "accuracy")
    stages, mean, half = bands["news"]
    assert stages == [0, 1, 2]
    np.testing.assert_allclose(mean, [0.55, 0.85, 0.7])
    # two seeds: t_{0.975,1} * s / sqrt(2); s = 0.0707 for (0.8, 0.9)
    assert half[1] == pytest.approx(12.7062 * 0.05, rel=1e-4) and half[2] == 0.0
    _, _, half1 = score_bands(cells((0,)), DOMAINS, [0], "accuracy")["news"]
    assert all(np.isnan(half1))  # one seed: no band


def test_one_seed_report_prints_no_interval(tmp_path):
    write_anytime_outputs(tmp_path, DOMAINS, cells((0,)), [0], {"method": "ncl"})
    md = (tmp_path / "report.md").read_text()
    assert "±" not in md and "+/-" not in md
    assert "| 1: news | 0.8000 | 0.5000 |" in md
    assert "one seed" in md
    two = tmp_path / "two"
    write_anytime_outputs(two, DOMAINS, cells(), [0, 1], {"method": "ncl"})
    assert "| 1: news | 0.8500 ± 0.6353 |" in (two / "report.md").read_text()


def test_compare_cli_writes_a_side_by_side_figure(tmp_path):
    for name, seeds in (("ncl", (0,)), ("full", (0, 1))):
        write_anytime_outputs(tmp_path / name, DOMAINS, cells(seeds), list(seeds), {})
    out = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines/compare.py"), str(tmp_path / "ncl"),
                           str(tmp_path / "full"), "--figure", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"figure: {out}" in proc.stdout
    assert_image(out)
    bad = subprocess.run([sys.executable, str(REPO / "pipelines/compare.py"), str(tmp_path / "ncl"),
                          "--figure", str(tmp_path / "nodir" / "x.png")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
