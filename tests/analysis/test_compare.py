"""Comparing two models layer by layer: the pipeline behind ``cka-lab compare``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_lab.analysis.compare import compare_models, model_input, probe_loader, stage_starts
from cka_lab.analysis.spec import AnalysisSpec
from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import linear_cka
from cka_lab.models import create_edt


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    sr = create_edt("SRx2_EDTT").eval()
    torch.manual_seed(1)
    dn = create_edt("DNg25_EDTT").eval()
    return sr, dn


def test_a_model_compared_with_itself_has_a_unit_diagonal(models):
    sr, _ = models
    batches, _ = probe_loader(None, patch=48, n_samples=8, seed=0, batch_size=4)
    res = compare_models(sr, sr, AnalysisSpec(layers="body.layers.*", unit_size=4), batches=batches, progress=False)
    assert res.layers_a == [f"body.layers.{i}" for i in range(4)]
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-9)
    assert res.n_samples == 8 and res.n_batches == 2 and res.n_units == 2
    assert res.summary()["mean_diagonal_cka"] == pytest.approx(1.0)
    assert res.summary()["protocol"] == "unbiased-minibatch CKA, layers body.layers.*, update features, N=8"


def test_an_sr_and_a_denoising_model_are_compared_on_the_same_crops(models):
    sr, dn = models
    batches, _ = probe_loader(None, patch=96, n_samples=8, seed=0, batch_size=4)
    res = compare_models(sr, dn, AnalysisSpec(layers=("body.layers.0", "body.norm"), unit_size=4),
                         batches=batches, progress=False)
    assert res.matrix.shape == (2, 2) and res.task_a == "x2" and res.task_b == "g25"
    assert np.isfinite(res.matrix).all() and (np.abs(res.matrix) <= 1 + 1e-9).all()
    assert list(res.table().columns) == ["body.layers.0", "body.norm"]


def test_the_streaming_result_matches_cka_on_all_features_at_once_for_one_batch(models):
    sr, _ = models
    batches, _ = probe_loader(None, patch=48, n_samples=16, seed=3, batch_size=16)
    x = next(iter(batches))
    feats = {}
    hooks = [sr.body.layers[i].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o.flatten(1).double()))
             for i in (0, 3)]
    with torch.no_grad():
        sr.forward_task(x, "x2")
    for h in hooks:
        h.remove()
    spec = AnalysisSpec(layers=("body.layers.0", "body.layers.3"), features="output", unit_size=16)
    res = compare_models(sr, sr, spec, batches=batches, progress=False)
    # one unit: the minibatch estimator is the unbiased CKA of that batch; it tracks the biased one loosely
    assert res.matrix[0, 1] == pytest.approx(linear_cka(feats[0], feats[3]).item(), abs=0.05)


def test_noise_for_denoising_heads_is_seeded_per_crop_and_sized_by_sigma():
    x = torch.zeros(4, 3, 8, 8)
    a = model_input(x, "g25", seed=0, first_index=4)
    assert torch.equal(a, model_input(x, "g25", seed=0, first_index=4))
    assert not torch.equal(a, model_input(x, "g25", seed=0, first_index=8))
    # crop 5's noise is the same whether it is second in a batch from 4 or first in a batch from 5
    assert torch.equal(a[1:], model_input(x[1:], "g25", seed=0, first_index=5))
    assert a.std().item() == pytest.approx(25 / 255, rel=0.1)
    assert torch.equal(model_input(x, "x2", seed=0, first_index=4), x)


def test_stage_boundaries_follow_body_layers():
    names = [f"body.layers.{i}.residual_group.blocks.{j}" for i in range(3) for j in range(2)]
    assert stage_starts(names) == [2, 4]


def test_bad_probe_settings_are_refused_before_any_forward_pass(models, tmp_path):
    sr, dn = models
    with pytest.raises(CkaLabError, match="at least 4"):
        probe_loader(None, patch=48, n_samples=8, seed=0, batch_size=2)
    with pytest.raises(CkaLabError, match="last batch of 2"):
        probe_loader(None, patch=48, n_samples=10, seed=0, batch_size=4)
    batches, _ = probe_loader(None, patch=48, n_samples=8, seed=0, batch_size=4)
    with pytest.raises(CkaLabError, match="not a multiple of 96"):
        compare_models(sr, dn, batches=batches, progress=False)
    with pytest.raises(CkaLabError, match="body.layerz"):
        compare_models(sr, sr, AnalysisSpec(layers="body.layerz.*"), batches=batches, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CkaLabError):
        probe_loader(tmp_path / "empty", patch=48, n_samples=8, seed=0, batch_size=4)
