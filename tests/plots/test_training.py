"""The training-log figure: six panels, the plotted curves are the log's values, old logs get notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cka_lab.errors import CkaLabError
from cka_lab.plots import save_figure
from cka_lab.plots.training import log_stages, plot_training_log
from cka_lab.train.diagnostics import diagnostic_columns


def _log(n=6, stages=2):
    it = np.arange(1, n + 1) * 10
    df = pd.DataFrame({"iteration": it, "lr": 2e-4, "loss": 0.1 / np.sqrt(it), "loss_x2": 0.1 / np.sqrt(it)})
    for c in diagnostic_columns(stages):
        df[c] = np.linspace(0.01, 0.02, n)
    for s in range(stages):
        df[f"s{s}_attn_entropy_rel"] = 1.0 - np.geomspace(1e-6, 1e-2, n) * (s + 1)
    return df


def test_six_panels_with_the_logs_values(tmp_path):
    tl = _log()
    val = pd.DataFrame({"iteration": [30, 60], "task": "x2", "psnr": [30.1, 31.5], "ssim": 0.9})
    fig = plot_training_log(tl, val, title="run")
    axes = fig.axes
    assert len(axes) == 6
    ent = axes[3]
    assert len(ent.lines) == 2 and ent.get_yscale() == "log"
    np.testing.assert_allclose(ent.lines[1].get_ydata(), 1.0 - tl["s1_attn_entropy_rel"], rtol=1e-12)
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), [30.1, 31.5])
    assert len(axes[4].lines) == 2  # logit spread per stage
    assert [l.get_label() for l in axes[5].lines] == ["q", "k", "v"]  # update ratios, mean over stages
    np.testing.assert_allclose(axes[5].lines[0].get_ydata(), tl[["s0_q_update_ratio", "s1_q_update_ratio"]].mean(axis=1))
    path = save_figure(fig, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_log_without_diagnostics_gets_notes_not_errors():
    tl = _log()[["iteration", "lr", "loss"]]
    assert log_stages(tl) == []
    fig = plot_training_log(tl, None)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no validation" in t for t in texts) and any("no attention diagnostics" in t for t in texts)


def test_not_a_training_log():
    with pytest.raises(CkaLabError, match="no 'loss' column"):
        plot_training_log(pd.DataFrame({"iteration": [1]}))
    with pytest.raises(CkaLabError, match="no rows"):
        plot_training_log(pd.DataFrame({"iteration": [], "loss": []}))
