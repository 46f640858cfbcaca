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
        df[f"s{s}_plain_entropy_rel"] = 1.0 - np.geomspace(1e-6, 1e-2, n) * (s + 1)
        df[f"s{s}_shifted_entropy_rel"] = 1.0 - np.geomspace(1e-6, 1e-2, n) * (s + 2)
        df[f"s{s}_plain_learnt"] = np.linspace(0, 0.25 * (s + 1), n)
    return df


def _heads(iterations=(50, 60)):
    recs = [{"iteration": i, "stage": s, "block": b, "kind": "plain" if b % 2 == 0 else "shifted", "direction": d,
             "head": h, "entropy_rel": 1.0 - 0.01 * h - 0.1 * (i == 60) * (s == 1 and b == 2 and d == 1 and h == 3),
             "logit_spread": 0.1} for i in iterations for s in range(2) for b in range(4) for d in range(2) for h in range(6)]
    return pd.DataFrame(recs)


def test_eight_panels_with_the_logs_values(tmp_path):
    tl = _log()
    val = pd.DataFrame({"iteration": [30, 60], "task": "x2", "psnr": [30.1, 31.5], "ssim": 0.9})
    fig = plot_training_log(tl, val, title="run", heads=_heads())
    axes = fig.axes
    assert len(axes) == 9  # eight panels and the colour bar of the per-head panel
    ent = axes[4]
    assert len(ent.lines) == 4 and ent.get_yscale() == "log"  # 2 stages x (plain, shifted)
    assert [l.get_linestyle() for l in ent.lines] == ["-", "--", "-", "--"]
    np.testing.assert_allclose(ent.lines[2].get_ydata(), 1.0 - tl["s1_plain_entropy_rel"], rtol=1e-12)
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), [30.1, 31.5])
    np.testing.assert_allclose(axes[5].lines[2].get_ydata(), tl["s1_plain_learnt"])  # learnt fraction
    assert len(axes[6].lines) == 4  # logit spread per stage and kind
    assert [l.get_label() for l in axes[3].lines] == ["q", "k", "v"]  # update ratios, mean over stages
    np.testing.assert_allclose(axes[3].lines[0].get_ydata(), tl[["s0_q_update_ratio", "s1_q_update_ratio"]].mean(axis=1))
    grid = axes[7].images[0].get_array()
    assert grid.shape == (8, 12)  # (stage, block) x (direction, head), the last iteration only
    assert grid[1 * 4 + 2, 6 + 3] == pytest.approx(1.0 - 0.03 - 0.1)
    path = save_figure(fig, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_older_log_with_one_entropy_column_per_stage_is_drawn():
    tl = _log()[["iteration", "lr", "loss"]].assign(s0_attn_entropy_rel=0.999, s0_logit_spread=0.01)
    assert log_stages(tl) == [0]
    fig = plot_training_log(tl)
    assert [l.get_label() for l in fig.axes[4].lines] == ["s0 both: H/Hmax 0.9990"]


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
