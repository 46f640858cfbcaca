"""Contrasting two models: one pass gives both CKA maps, the cross map and attention distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cka_lab.analysis.compare import compare_models, probe_loader
from cka_lab.analysis.contrast import contrast_models
from cka_lab.analysis.spec import AnalysisSpec
from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt
from cka_lab.models.edt import explicit_attention


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    a = create_edt("SRx2_EDTT").eval()
    torch.manual_seed(1)
    b = create_edt("SRx2_EDTT").eval()
    return a, b


@pytest.fixture(scope="module")
def batches():
    b, _ = probe_loader(None, patch=48, n_samples=8, seed=0, batch_size=4)
    return list(b)


@pytest.fixture(scope="module")
def contrast(models, batches):
    a, b = models
    spec = AnalysisSpec(layers="body.layers.*", unit_size=4)
    return contrast_models(a, b, spec, batches=batches, name_a="a", name_b="b", progress=False)


def test_the_three_maps_equal_separate_comparisons(models, batches, contrast):
    a, b = models
    spec = AnalysisSpec(layers="body.layers.*", unit_size=4, attention=False)
    kw = dict(batches=batches, progress=False)
    # the contrast measured attention, which runs the explicit attention path; the same path here gives the
    # same features bit for bit (the fused path differs from it by float32 rounding, ~1e-7 in CKA)
    with explicit_attention():
        np.testing.assert_allclose(contrast.cross.matrix, compare_models(a, b, spec, **kw).matrix, atol=1e-12)
    # the same accumulator, fed unit by unit by hand
    from cka_lab.features import FeatureExtractor
    from cka_lab.metrics.cka import MinibatchCKA

    metric = MinibatchCKA([f"body.layers.{i}" for i in range(4)], [f"body.layers.{i}" for i in range(4)])
    with FeatureExtractor(a, "body.layers.*", kind="update") as fa, torch.inference_mode(), explicit_attention():
        for x in batches:
            a.forward_task(x, "x2")
            metric.update(fa.features, fa.features)
    np.testing.assert_allclose(contrast.within_a.matrix, metric.compute().numpy(), atol=1e-12)


def test_the_difference_is_a_minus_b_and_the_diagonal_of_each_map_is_one(contrast):
    np.testing.assert_allclose(np.diag(contrast.within_a.matrix), 1.0, atol=1e-9)
    np.testing.assert_allclose(contrast.difference, contrast.within_a.matrix - contrast.within_b.matrix)
    assert np.allclose(np.diag(contrast.difference), 0.0, atol=1e-9)


def test_attention_distances_are_measured_for_both_models(contrast):
    att = contrast.attention
    assert set(att["model"]) == {"a", "b"}
    # EDT-T: 4 stages x 6 blocks x 2 strip directions x 6 heads (each direction has all 6), per model
    assert len(att) == 2 * 4 * 6 * 2 * 6
    layers = contrast.attention_layers  # per model, stage, window kind and strip direction, with the baseline
    assert list(layers.columns[:4]) == ["model", "layer", "kind", "direction"]
    assert len(layers) == 2 * 4 * 2 * 2
    np.testing.assert_allclose(layers["locality"], layers["distance"] / layers["uniform_distance"], rtol=1e-6)


def test_stage_table_and_summary_hold_the_quoted_numbers(contrast):
    t = contrast.stage_table()
    assert list(t["model"]) == ["a"] * 4 + ["b"] * 4
    np.testing.assert_allclose(t["cross_model_same_layer"][:4], np.diag(contrast.cross.matrix))
    s = contrast.summary()
    assert s["mean_cross_same_layer_cka"] == pytest.approx(np.mean(np.diag(contrast.cross.matrix)))
    assert {r["layer"] for r in s["attention_a"]} == {0, 1, 2, 3}
    assert s["protocol"] == "unbiased-minibatch CKA, layers body.layers.*, update features, N=8"


def test_a_same_task_contrast_refuses_models_probed_on_different_heads(batches):
    sr, dn = create_edt("SRx2_EDTT"), create_edt("DNg25_EDTT")
    with pytest.raises(CkaLabError, match="needs one task for both"):
        contrast_models(sr, dn, batches=batches, same_task=True, progress=False)


def test_a_model_without_attention_modules_is_refused_with_the_way_out(batches):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with pytest.raises(CkaLabError, match="no window-attention modules.*attention=False"):
        contrast_models(net, net, AnalysisSpec(layers="0", unit_size=4), batches=batches, progress=False)
