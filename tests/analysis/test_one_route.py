"""One route per job: ``compare_models`` is the cross map of ``contrast_models`` with attention and
controls off (bit for bit), and the entry points with many options take them as one dataclass or as the
keywords they always took."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cka_lab.analysis.compare import compare_models
from cka_lab.analysis.contrast import ContrastOptions, contrast_models
from cka_lab.analysis.spec import AnalysisSpec
from cka_lab.errors import CkaLabError
from cka_lab.plots import HeatmapStyle, plot_cka_heatmap


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()


def _batches():
    return list(torch.rand(32, 3, 6, 6, generator=torch.Generator().manual_seed(0)).split(16))


@pytest.mark.parametrize("estimator", ["unbiased-minibatch", "biased-full"])
def test_compare_is_the_cross_map_of_a_contrast_without_attention_and_controls(estimator):
    spec = AnalysisSpec(layers=("0", "2"), features="output", estimator=estimator, unit_size=8)
    options = ContrastOptions(batches=_batches(), name_a="a", name_b="b", progress=False)
    comp = compare_models(_net(0), _net(1), spec, options)
    cross = contrast_models(_net(0), _net(1), spec.replace(attention=False, controls=False), options).cross
    assert vars(comp).keys() == vars(cross).keys()
    for key, value in vars(comp).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(cross, key), equal_nan=True), key
        else:
            assert value == getattr(cross, key), key
    by_keywords = compare_models(_net(0), _net(1), spec, batches=_batches(), name_a="a", name_b="b", progress=False)
    assert np.array_equal(by_keywords.matrix, comp.matrix) and by_keywords.name_a == "a"


def test_an_unknown_option_is_a_one_line_error():
    with pytest.raises(CkaLabError, match="compare_models got unknown option.*name_c") as err:
        compare_models(_net(0), _net(1), None, name_c="x")
    assert "\n" not in str(err.value)
    with pytest.raises(CkaLabError, match="plot_cka_heatmap got unknown option.*colour"):
        plot_cka_heatmap(np.eye(2), ["a", "b"], ["a", "b"], colour="red")


def test_a_heatmap_style_is_the_keywords_it_replaces():
    by_style = plot_cka_heatmap(np.eye(2), ["a", "b"], ["c", "d"], HeatmapStyle(vmin=0.2, vmax=0.8), name_a="A")
    by_keywords = plot_cka_heatmap(np.eye(2), ["a", "b"], ["c", "d"], vmin=0.2, vmax=0.8, name_a="A")
    for fig in (by_style, by_keywords):
        assert fig.axes[0].collections[0].get_clim() == (0.2, 0.8)
        assert fig.axes[0].get_ylabel().startswith("A")
