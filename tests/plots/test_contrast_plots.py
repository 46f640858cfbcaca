"""Difference maps and attention-distance curves draw what they are given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cka_lab.errors import CkaLabError
from cka_lab.plots.contrast import attention_curves, plot_attention_distance, plot_cka_difference


def test_the_difference_map_is_centred_on_zero_with_a_symmetric_scale():
    d = np.array([[0.0, 0.2], [-0.1, 0.0]])
    fig = plot_cka_difference(d, ["l0", "l1"], name_a="A", name_b="B")
    mesh = fig.axes[0].collections[0]
    assert mesh.norm.vmin == pytest.approx(-0.2) and mesh.norm.vmax == pytest.approx(0.2)
    assert "CKA(A) - CKA(B)" in fig.axes[0].get_title()


def test_a_difference_of_the_wrong_shape_is_refused():
    with pytest.raises(CkaLabError, match="must be"):
        plot_cka_difference(np.zeros((2, 3)), ["a", "b"])


def _attention():
    rows = []
    for model, base in (("scratch", 4.0), ("pre", 2.0)):
        for layer in range(2):
            for block in range(2):
                for direction in ("horizontal", "vertical"):
                    for head in range(3):
                        rows.append(dict(model=model, layer=layer, block=block, direction=direction, head=head,
                                         mean=base + head))
    return pd.DataFrame(rows)


def test_attention_curves_give_mean_and_head_range_per_block_in_depth_order():
    c = attention_curves(_attention())
    first = c[(c.model == "scratch") & (c.direction == "horizontal")].sort_values("depth")
    assert list(first["depth"]) == [0, 1, 2, 3]
    assert (first["mean"] == 5.0).all() and (first["head_min"] == 4.0).all() and (first["head_max"] == 6.0).all()


def test_the_attention_figure_has_one_line_per_model_in_each_direction():
    fig = plot_attention_distance(_attention(), title="t")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == ["scratch", "pre"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["scratch", "pre"]


def test_a_locality_table_is_drawn_against_the_uniform_line():
    att = _attention().rename(columns={"mean": "locality"})
    att["locality"] = att["locality"] / 4.0
    fig = plot_attention_distance(att)
    assert fig.axes[0].get_ylabel().startswith("locality")
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in fig.axes[0].get_lines())


def test_the_difference_map_marks_the_stated_cells_and_says_how_many():
    d = np.array([[0.0, 0.2], [0.2, 0.0]])
    stated = np.array([[False, True], [False, False]])
    fig = plot_cka_difference(d, ["s0", "s1"], stated=stated, title="CKA(a) - CKA(b)\nunbiased-minibatch CKA, N=64")
    ax = fig.axes[0]
    assert "1 cells beyond their interval and the controls" in ax.get_title().replace("\n", " ")
    assert "N=64" in ax.get_title()
    assert len(ax.collections[-1].get_offsets()) == 1
    fig = plot_cka_difference(d, ["s0", "s1"], stated=np.zeros((2, 2), bool))
    assert "not decidable at this scale" in fig.axes[0].get_title().replace("\n", " ")
