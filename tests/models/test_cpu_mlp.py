"""The compiled MLP middle is ``GELU(dwconv(GELU(h + b1)) + b2)`` and its gradient.

Checked against float64 autograd of torch's own ``F.gelu`` and ``F.conv2d(groups=C)`` for kernel sizes
1-7, channel counts around the 16-lane vectors, maps smaller than the kernel, extreme inputs (GELU's
tails), batches split between threads, and in EDT's MLP, which must take the module route whenever
something hooks ``fc1``, ``act`` or ``dwconv``, no gradient flows, or autocast is on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cka_lab.models import cpu_kernels
from cka_lab.models import edt as edt_mod
from cka_lab.models.cpu_mlp import gelu_dwconv_gelu, mlp_kernel_supports
from cka_lab.models.edt import Mlp

pytestmark = pytest.mark.skipif(not cpu_kernels.kernel_available(), reason="no C++ compiler here: the kernel cannot be built")


def _case(B, H, W, C, k, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, H, W, C, generator=g) * spread
    b1 = torch.randn(C, generator=g)
    weight = torch.randn(C, 1, k, k, generator=g) / k
    b2 = torch.randn(C, generator=g)
    grad = torch.randn(B, H, W, C, generator=g)
    return (h, b1, weight, b2), grad


def _module_route(h, b1, weight, b2):
    """The official MLP middle: torch's modules' functions on channels-last maps."""
    k = weight.shape[-1]
    a = F.gelu(h + b1).permute(0, 3, 1, 2)
    return F.gelu(F.conv2d(a, weight, b2, padding=k // 2, groups=h.shape[-1])).permute(0, 2, 3, 1)


def _grads(fn, inputs, grad, dtype):
    xs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    out = fn(*xs)
    out.backward(grad.to(dtype))
    return out.detach(), [x.grad for x in xs]


def _rel(a, b):
    return (a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-30)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("C", [1, 16, 17, 120])
def test_outputs_and_gradients_match_float64(k, C):
    inputs, grad = _case(B=3, H=9, W=11, C=C, k=k, seed=k * C)
    ref, ref_g = _grads(_module_route, inputs, grad, torch.float64)
    out, got = _grads(gelu_dwconv_gelu, inputs, grad, torch.float32)
    assert out.shape == inputs[0].shape and out.dtype == torch.float32
    assert _rel(out, ref) <= 1e-6
    for name, a, b in zip(("h", "b1", "weight", "b2"), got, ref_g):
        assert _rel(a, b) <= (1e-6 if name == "h" else 1e-5), name


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (1, 9), (4, 4), (13, 2)])
def test_maps_smaller_than_the_kernel_and_rows_not_a_multiple_of_four(shape):
    inputs, grad = _case(B=2, H=shape[0], W=shape[1], C=20, k=5)
    ref, ref_g = _grads(_module_route, inputs, grad, torch.float64)
    out, got = _grads(gelu_dwconv_gelu, inputs, grad, torch.float32)
    assert _rel(out, ref) <= 1e-6
    assert all(_rel(a, b) <= 1e-5 for a, b in zip(got, ref_g))


def test_gelu_tails_are_as_accurate_as_torchs_own():
    """Large |h|: GELU is x or 0 there; the kernel's error must stay within twice torch's float32 error."""
    inputs, grad = _case(B=2, H=8, W=8, C=24, k=5, spread=12.0)
    ref, ref_g = _grads(_module_route, inputs, grad, torch.float64)
    t32, t32_g = _grads(_module_route, inputs, grad, torch.float32)
    out, got = _grads(gelu_dwconv_gelu, inputs, grad, torch.float32)
    assert _rel(out, ref) <= max(2 * _rel(t32, ref), 1e-6)
    for a, t, b in zip(got, t32_g, ref_g):
        assert _rel(a, b) <= max(2 * _rel(t, b), 1e-5)


def test_results_do_not_depend_on_the_thread_count():
    inputs, grad = _case(B=5, H=12, W=12, C=40, k=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_grads(gelu_dwconv_gelu, inputs, grad, torch.float32))
    finally:
        torch.set_num_threads(before)
    out0, g0 = results[0]
    for out, g in results[1:]:
        assert torch.equal(out, out0) and torch.equal(g[0], g0[0])  # each image is computed whole by one thread
        # the images' shares of the weight and bias gradients are added in image order, whatever the split
        assert all(torch.equal(a, b) for a, b in zip(g[1:], g0[1:]))


def test_bad_inputs_get_one_clear_error():
    (h, b1, w, b2), _ = _case(B=1, H=4, W=4, C=8, k=5)
    with pytest.raises(ValueError, match="float32"):
        gelu_dwconv_gelu(h.double(), b1, w, b2)
    with pytest.raises(ValueError, match=r"weight must be \(8, 1, k, k\)"):
        gelu_dwconv_gelu(h, b1, torch.zeros(8, 1, 9, 9), b2)
    with pytest.raises(ValueError, match="b2 must be"):
        gelu_dwconv_gelu(h, b1, w, b2[:4])


def test_what_the_kernel_stands_in_for():
    x = torch.zeros(1, 8, 8, 6)
    fc1, act = torch.nn.Linear(6, 12), torch.nn.GELU()
    conv = torch.nn.Conv2d(12, 12, 5, 1, 2, groups=12)
    assert mlp_kernel_supports(fc1, act, conv, x)
    assert not mlp_kernel_supports(fc1, torch.nn.GELU(approximate="tanh"), conv, x)
    assert not mlp_kernel_supports(fc1, torch.nn.ReLU(), conv, x)
    assert not mlp_kernel_supports(torch.nn.Linear(6, 12, bias=False), act, conv, x)
    assert not mlp_kernel_supports(fc1, act, torch.nn.Conv2d(12, 12, 5, 1, 1, groups=12), x)  # not "same"
    assert not mlp_kernel_supports(fc1, act, torch.nn.Conv2d(12, 12, 5, 2, 2, groups=12), x)  # strided
    assert not mlp_kernel_supports(fc1, act, torch.nn.Conv2d(12, 12, 5, 1, 2, groups=4), x)  # not depthwise
    assert not mlp_kernel_supports(fc1, act, torch.nn.Conv2d(12, 12, 9, 1, 4, groups=12), x)  # 9x9 not built
    assert not mlp_kernel_supports(fc1, act, torch.nn.Conv2d(12, 12, 5, 1, 2, groups=12, padding_mode="reflect"), x)
    assert not mlp_kernel_supports(fc1, act, conv, x.double())


def _spy(monkeypatch) -> list:
    calls = []
    real = edt_mod.gelu_dwconv_gelu
    monkeypatch.setattr(edt_mod, "gelu_dwconv_gelu", lambda *a: calls.append(1) or real(*a))
    return calls


def test_the_mlp_uses_the_kernel_when_gradients_flow_and_the_modules_otherwise(monkeypatch):
    torch.manual_seed(0)
    mlp = Mlp(12, 24)
    x = torch.randn(2, 8, 8, 12)
    calls = _spy(monkeypatch)
    out = mlp(x)
    out.sum().backward()
    assert len(calls) == 1
    k_grads = [p.grad.clone() for p in mlp.parameters()]
    with torch.no_grad():  # evaluation: the modules, the same numbers to float32 rounding
        assert _rel(mlp(x), out.detach()) <= 1e-6
    assert len(calls) == 1
    for hooked in (mlp.fc1, mlp.act, mlp.dwconv):
        seen = []
        handle = hooked.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape))
        try:
            mlp.zero_grad()
            mlp(x).sum().backward()
        finally:
            handle.remove()
        assert len(calls) == 1 and seen, hooked  # hooked: the modules ran, the hook saw their output
        for a, b in zip(k_grads, (p.grad for p in mlp.parameters())):
            assert _rel(a, b) <= 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mlp(x).float().sum().backward()
    assert len(calls) == 1  # autocast: the modules
