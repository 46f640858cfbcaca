"""A model in several contrasts of one command has its attention statistics measured once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cka_lab.analysis.attention_cache import AttentionCache, model_digest
from cka_lab.analysis.contrast import contrast_models
from cka_lab.analysis.spec import AnalysisSpec, ProbeSpec
from cka_lab.models import create_edt
from cka_lab.models import edt as edt_module


def _model(seed: int):
    torch.manual_seed(seed)
    return create_edt("SRx2_EDTT").eval()


@pytest.fixture(scope="module")
def spec():
    return AnalysisSpec(probe=ProbeSpec(patch=24, n_samples=8, batch_size=4), layers="body.layers.*", unit_size=4)


def test_digest_follows_the_weights_not_the_object():
    a, a2, b = _model(0), _model(0), _model(1)
    assert model_digest(a) == model_digest(a2) != model_digest(b)


def test_cached_attention_equals_a_fresh_measurement_and_cka_stays_within_the_fused_tolerance(spec, monkeypatch):
    a, b, c = _model(0), _model(1), _model(2)
    cache = AttentionCache()
    contrast_models(a, b, spec, progress=False, attention_cache=cache)
    assert len(cache) == 2 and cache.hits == 0

    explicit_calls = []
    original = edt_module.WindowAttention._explicit

    def counting(self, qkv, mask):
        explicit_calls.append(self)
        return original(self, qkv, mask)

    monkeypatch.setattr(edt_module.WindowAttention, "_explicit", counting)
    cached = contrast_models(a, c, spec, progress=False, attention_cache=cache)
    assert cache.hits == 1 and len(cache) == 3
    a_modules = {id(m) for m in a.modules()}
    assert not any(id(m) in a_modules for m in explicit_calls)  # A ran on the fused path
    assert explicit_calls  # C was measured on the explicit path
    monkeypatch.undo()

    fresh = contrast_models(a, c, spec, progress=False)
    pd.testing.assert_frame_equal(cached.attention_a, fresh.attention_a)
    pd.testing.assert_frame_equal(cached.attention_stages_a, fresh.attention_stages_a)
    pd.testing.assert_frame_equal(cached.attention_b, fresh.attention_b)
    np.testing.assert_allclose(cached.cross.matrix, fresh.cross.matrix, atol=1e-5)
    np.testing.assert_allclose(cached.within_a.matrix, fresh.within_a.matrix, atol=1e-5)


def test_another_probe_is_another_entry(spec):
    a, b = _model(0), _model(1)
    cache = AttentionCache()
    contrast_models(a, b, spec, progress=False, attention_cache=cache)
    contrast_models(a, b, spec.replace(seed=1), progress=False, attention_cache=cache)
    assert cache.hits == 0 and len(cache) == 4


def test_separate_passes_make_every_number_independent_of_the_order_of_contrasts(spec):
    # a resumed study starts with an empty cache: its contrasts must equal those of an uninterrupted one
    a, b, c = _model(0), _model(1), _model(2)
    cache = AttentionCache(separate=True)
    contrast_models(a, b, spec, progress=False, attention_cache=cache)
    after = contrast_models(a, c, spec, progress=False, attention_cache=cache)
    assert cache.hits == 1
    alone = contrast_models(a, c, spec, progress=False, attention_cache=AttentionCache(separate=True))
    for x, y in ((after.cross, alone.cross), (after.within_a, alone.within_a), (after.within_b, alone.within_b)):
        np.testing.assert_array_equal(x.matrix, y.matrix)
    pd.testing.assert_frame_equal(after.attention_a, alone.attention_a)
    pd.testing.assert_frame_equal(after.attention_stages_b, alone.attention_stages_b)
    # and the attention tables are those of the one-pass measurement
    one_pass = contrast_models(a, c, spec, progress=False)
    pd.testing.assert_frame_equal(after.attention_a, one_pass.attention_a)
    pd.testing.assert_frame_equal(after.attention_b, one_pass.attention_b)


def test_a_model_fed_the_centre_of_larger_crops_is_another_entry(spec):
    # SR probed alone: 24 px crops fed whole; beside a model probed larger, the crops are cut larger and
    # the SR model is fed their centre -- other pixels, so its statistics must not be reused
    a = _model(0)
    cache = AttentionCache()
    key = cache.key(a, "x2", None, spec, crop=24)
    assert cache.key(a, "x2", 24, spec, crop=96) != key
    assert cache.key(a, "x2", 24, spec, crop=96) != cache.key(a, "x2", 24, spec, crop=192)
    assert cache.key(_model(0), "x2", None, spec, crop=24) == key
