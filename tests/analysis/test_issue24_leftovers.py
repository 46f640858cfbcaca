"""Issue 24's causes in analysis/: biased-full names a constant layer; unit-size hints; an all-NaN row has no best match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_lab.analysis.compare import Comparison
from cka_lab.analysis.estimators import resolve_unit_size
from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import CKASpec, cka_by_passes


def test_biased_full_warns_naming_a_constant_layer():
    g = torch.Generator().manual_seed(0)
    feats = {"live": torch.randn(16, 5, generator=g), "flat": torch.full((16, 5), 0.5)}

    def run(group, _):
        yield {k: feats[k] for k in group}, {}

    with pytest.warns(UserWarning, match="'flat' has constant features"):
        est = cka_by_passes(["live", "flat"], None, run, CKASpec(estimator="biased-full", unit_size=4), n_samples=16,
                            feature_numel={"live": 5, "flat": 5})
    assert est.constant_a == ("flat",)
    assert np.isnan(est.matrix[1]).all() and est.matrix[0, 0] == pytest.approx(1.0)


def test_unit_size_messages_name_the_right_flag_and_two_different_sizes():
    with pytest.raises(CkaLabError, match="use --unit-size >= 4"):
        resolve_unit_size(1, 32, 64)
    with pytest.raises(CkaLabError, match="use --batch-size >= 4"):
        resolve_unit_size(None, 2, 64)
    with pytest.raises(CkaLabError) as e:
        resolve_unit_size(64, 32, 128)
    assert "use a batch size of 64" in str(e.value) and "64 or 64" not in str(e.value)


def test_an_all_nan_row_has_no_best_match():
    m = np.array([[0.9, 0.2], [np.nan, np.nan]])
    c = Comparison("a", "b", "EDT", "EDT", "x2", "x2", ["l0", "l1"], ["m0", "m1"], m, 16, 1, 48, "probes")
    assert c.summary()["best_match_of_a"] == {"l0": "m0", "l1": None}
