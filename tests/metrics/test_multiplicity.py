import numpy as np
import pytest
from scipy.stats import false_discovery_control

from cka_lab.metrics.multiplicity import benjamini_hochberg, holm, reject


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.03, 0.2 with m = 4: 0.04, 0.06, 0.06 (running max), 0.2
    p = [0.03, 0.01, 0.2, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.2, 0.06])
    assert reject(holm(p), 0.05).tolist() == [False, True, False, False]


def test_holm_caps_at_one_and_keeps_nan_out_of_the_family():
    out = holm([0.5, np.nan, 0.4])
    np.testing.assert_allclose(out[[0, 2]], [0.8, 0.8])
    assert np.isnan(out[1])
    assert holm([0.9, 0.8]).max() == 1.0


def test_bh_matches_scipy_and_keeps_shape():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(7, 9)) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p.ravel()).reshape(7, 9), rtol=1e-12)


def test_bh_hand_computed():
    # m = 4: 0.01*4/1 = 0.04, 0.02*4/2 = 0.04, 0.03*4/3 = 0.04, 0.2*4/4 = 0.2
    np.testing.assert_allclose(benjamini_hochberg([0.03, 0.01, 0.2, 0.02]), [0.04, 0.04, 0.2, 0.04])


def test_empty_and_bad_values():
    assert holm([]).shape == (0,)
    assert np.isnan(benjamini_hochberg([np.nan])).all()
    with pytest.raises(ValueError):
        holm([1.5])
