"""CKA heatmaps and tables."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from cka_lab.errors import CkaLabError
from cka_lab.plots import HeatmapPanel, cka_table, plot_cka_heatmap, plot_cka_heatmaps, shorten_names

LAYERS_A = [f"body.layers.{i}.attn" for i in range(6)]
LAYERS_B = [f"layers.{i}" for i in range(4)]


@pytest.fixture()
def matrix() -> torch.Tensor:
    return torch.linspace(0, 1, 24, dtype=torch.float64).reshape(6, 4)


def test_cka_table_has_layers_a_as_index_and_layers_b_as_columns(matrix):
    table = cka_table(matrix, LAYERS_A, LAYERS_B)
    assert table.index.tolist() == LAYERS_A and table.columns.tolist() == LAYERS_B
    assert table.loc["body.layers.5.attn", "layers.3"] == pytest.approx(1.0)


def test_cka_table_writes_a_csv_that_reads_back(matrix, tmp_path):
    path = tmp_path / "out" / "cka.csv"
    cka_table(matrix, LAYERS_A, LAYERS_B, csv_path=path)
    back = pd.read_csv(path, index_col=0)
    np.testing.assert_allclose(back.to_numpy(), matrix.numpy())
    assert back.index.tolist() == LAYERS_A


def test_a_matrix_that_does_not_fit_the_layer_names_is_an_error(matrix):
    with pytest.raises(CkaLabError, match="does not match"):
        cka_table(matrix, LAYERS_A[:5], LAYERS_B)


def test_shorten_names_moves_the_shared_prefix_and_suffix_out_of_the_labels():
    assert shorten_names(LAYERS_A) == ("body.layers.*.attn", ["0", "1", "2", "3", "4", "5"])
    assert shorten_names(["stem", "body", "tail"]) == ("", ["stem", "body", "tail"])
    assert shorten_names(["body.a", "body.a.b"]) == ("body.*", ["a", "a.b"])


def test_heatmap_returns_a_figure_with_short_tick_labels_and_a_linear_cka_colorbar(matrix):
    fig = plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B, name_a="EDT-T", name_b="ConvNet")
    assert isinstance(fig, Figure)
    heat, colorbar = fig.axes
    assert colorbar.get_ylabel() == "linear CKA"
    assert [t.get_text() for t in heat.get_yticklabels()] == ["0", "1", "2", "3", "4", "5"]
    assert "EDT-T" in heat.get_ylabel() and "body.layers.*.attn" in heat.get_ylabel()
    assert heat.get_title() == "EDT-T vs ConvNet"


def test_the_colour_scale_defaults_to_zero_one_and_can_be_set(matrix):
    heat = plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B).axes[0]
    assert heat.collections[0].get_clim() == (0.0, 1.0)
    heat = plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B, vmin=0.2, vmax=0.8).axes[0]
    assert heat.collections[0].get_clim() == (0.2, 0.8)


def test_stage_boundaries_draw_lines_between_groups(matrix):
    heat = plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B, stages_a=(2, 4), stages_b=(2,)).axes[0]
    assert len(heat.lines) == 3


def test_panels_share_one_colorbar(matrix):
    panels = [HeatmapPanel(matrix, LAYERS_A, LAYERS_B, "A", "B"), HeatmapPanel(matrix.T, LAYERS_B, LAYERS_A, "B", "A")]
    fig = plot_cka_heatmaps(panels, suptitle="two")
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "linear CKA"


def test_sixty_layers_get_a_readable_figure_size():
    names = [f"body.layers.{i}" for i in range(60)]
    fig = plot_cka_heatmap(np.eye(60), names, names)
    width, height = fig.get_size_inches()
    assert 8 <= width <= 14 and 8 <= height <= 14
    assert not fig.axes[0].texts  # no cell annotations at 60 layers


def test_saving_writes_a_png_without_changing_the_global_backend(matrix, tmp_path):
    backend = matplotlib.get_backend()
    path = tmp_path / "figs" / "cka.png"
    plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend


def test_nan_cells_are_drawn_not_hidden_in_the_table(matrix):
    matrix[1, :] = float("nan")
    table = cka_table(matrix, LAYERS_A, LAYERS_B)
    assert table.iloc[1].isna().all()
    assert isinstance(plot_cka_heatmap(matrix, LAYERS_A, LAYERS_B), Figure)
