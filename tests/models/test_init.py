"""cka_lab's own initialisation: the same weights from the same seed on every torch version.

The checksum below is of ``create_edt("SRx2_EDTT")`` after ``torch.manual_seed(0)``; it changes only
if the initialisation, the module order or the seeding changes (then every trained run's starting
point changes too: regenerate ``checkpoints/edtt_srx2_seed0.pt`` and update the pin).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from cka_lab.models import create_edt
from cka_lab.models.init import ndtri, stable_trunc_normal_, stable_uniform_

SRX2_EDTT_SEED0_SHA256 = "e6d650faaf843c91242afcaf931f331c5d75920d96f84a13a60f688f294694c3"


def state_sha256(model: nn.Module) -> str:
    """sha256 of the state dict's float32 bytes, key order (mask buffers included: they are deterministic)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def test_srx2_edtt_after_manual_seed_0_has_the_pinned_weights():
    torch.manual_seed(0)
    assert state_sha256(create_edt("SRx2_EDTT")) == SRX2_EDTT_SEED0_SHA256


def test_pytorchs_own_default_init_does_not_reach_the_weights(monkeypatch):
    """A torch version whose layer constructors draw differently (or more) still gives the same model."""
    torch.manual_seed(0)
    ref = create_edt("SRx2_EDTT").state_dict()

    def other_default(self):  # draws 3x as much as the real reset_parameters, from another distribution
        with torch.no_grad():
            self.weight.normal_()
            torch.rand(2 * self.weight.numel())

    monkeypatch.setattr(nn.Conv2d, "reset_parameters", other_default)
    monkeypatch.setattr(nn.Linear, "reset_parameters", other_default)
    torch.manual_seed(0)
    other = create_edt("SRx2_EDTT").state_dict()
    assert all(torch.equal(ref[k], other[k]) for k in ref)


def test_the_seed_decides_and_successive_models_differ():
    torch.manual_seed(1)
    a = create_edt("SRx2_EDTT")
    b = create_edt("SRx2_EDTT")
    assert state_sha256(a) != state_sha256(b) != SRX2_EDTT_SEED0_SHA256


def test_initial_weights_follow_the_swin_recipe():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT")
    linear = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)]).double()
    assert linear.numel() > 500_000
    assert abs(linear.std().item() - 0.02) < 0.0002 and abs(linear.mean().item()) < 0.0002
    # kurtosis of a normal is 3 (a uniform's 1.8): the draws are Gaussian-shaped
    z = (linear - linear.mean()) / linear.std()
    assert abs(z.pow(4).mean().item() - 3.0) < 0.05
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            assert not m.bias.any()
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            bound = 1 / math.sqrt(m.weight.shape[1] * math.prod(m.weight.shape[2:]))
            assert m.weight.abs().max().item() <= bound
            assert m.weight.abs().max().item() > 0.9 * bound or m.weight.numel() < 50


def test_ndtri_inverts_the_normal_cdf_to_float64_precision():
    p = np.concatenate([np.linspace(1e-6, 1 - 1e-6, 20001), 10.0 ** -np.arange(7, 300, 7.0), [0.5, 0.075, 0.925]])
    x = ndtri(p)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])  # F(x), computed independently
    sf = np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in x])  # 1 - F(x), exact for the upper tail
    err = np.where(p < 0.5, np.abs(cdf - p) / p, np.abs(sf - (1 - p)) / (1 - p))
    assert err.max() < 1e-12
    assert ndtri(np.array([0.5]))[0] == 0.0
    assert np.all(np.diff(ndtri(np.linspace(0.01, 0.99, 999))) > 0)


def test_truncated_normal_respects_its_bounds_and_the_uniform_its_bound():
    g = torch.Generator().manual_seed(0)
    t = stable_trunc_normal_(torch.empty(200_000), std=1.0, gen=g, a=-0.5, b=1.0)
    assert t.min().item() >= -0.5 and t.max().item() <= 1.0
    # mean of N(0, 1) truncated to [-0.5, 1]: (phi(-0.5) - phi(1)) / (F(1) - F(-0.5))
    phi = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    big_f = lambda v: 0.5 * math.erfc(-v / math.sqrt(2))  # noqa: E731
    expected = (phi(-0.5) - phi(1.0)) / (big_f(1.0) - big_f(-0.5))
    assert abs(t.double().mean().item() - expected) < 0.005
    u = stable_uniform_(torch.empty(100_000), 0.25, g)
    assert -0.25 <= u.min().item() < -0.249 and 0.249 < u.max().item() < 0.25
    # the same generator state gives the same numbers
    a = stable_trunc_normal_(torch.empty(10), 0.02, torch.Generator().manual_seed(5))
    b = stable_trunc_normal_(torch.empty(10), 0.02, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["SRx2x3x4_EDTT", "DNg15g25g50_EDTT"])
def test_other_architectures_build_finite_weights(name):
    torch.manual_seed(0)
    model = create_edt(name)
    assert all(torch.isfinite(p).all() for p in model.parameters())
