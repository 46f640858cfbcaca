"""The locality figure draws each stage's value, its interval and the uniform reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cka_lab.errors import CkaLabError
from cka_lab.plots.attention import plot_locality


def _summary() -> pd.DataFrame:
    rows = []
    for model in ("scratch", "pre"):
        for layer in range(3):
            for kind in ("plain", "shifted"):
                for direction in ("horizontal", "vertical"):
                    v = 0.9 - 0.1 * layer
                    rows.append(dict(model=model, layer=layer, kind=kind, direction=direction, locality=v,
                                     locality_lower=v - 0.02, locality_upper=v + 0.03, entropy_rel=0.99,
                                     entropy_rel_lower=0.98, entropy_rel_upper=1.0, n_crops=64, confidence=0.95))
    return pd.DataFrame(rows)


def test_one_errorbar_series_per_model_and_kind_and_a_uniform_line_in_every_panel(tmp_path):
    fig = plot_locality(_summary(), title="t", path=tmp_path / "loc.png")
    assert (tmp_path / "loc.png").stat().st_size > 0
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert len(ax.containers) == 2 * 2  # errorbar containers: 2 models x 2 kinds
        assert any(np.allclose(line.get_ydata(), 1.0) for line in ax.get_lines())
    data_line, caplines, barcols = fig.axes[0].containers[0]
    assert np.allclose(data_line.get_ydata(), [0.9, 0.8, 0.7])
    segments = barcols[0].get_segments()
    assert np.allclose([s[:, 1] for s in segments], [[0.88, 0.93], [0.78, 0.83], [0.68, 0.73]])
    assert "95% jackknife CI" in fig.legends[0].get_title().get_text()


def test_a_table_without_kind_is_refused():
    with pytest.raises(CkaLabError, match="lacks columns"):
        plot_locality(_summary().drop(columns="kind"))
