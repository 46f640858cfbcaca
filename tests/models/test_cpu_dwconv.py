"""The compiled backward of the depthwise convolution is conv2d's backward.

Checked against float64 autograd of ``F.conv2d(groups=C)`` for kernel sizes 1-7, channel counts around
the 16-lane vectors, maps smaller than the kernel, batches split between threads, and in EDT's MLP,
which must take the module route whenever something hooks ``dwconv`` or no gradient flows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cka_lab.models import cpu_kernels
from cka_lab.models.cpu_dwconv import depthwise_conv, dwconv_kernel_supports
from cka_lab.models.edt import Mlp

pytestmark = pytest.mark.skipif(not cpu_kernels.kernel_available(), reason="no C++ compiler here: the kernel cannot be built")


def _case(B, H, W, C, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, C, generator=g)
    weight = torch.randn(C, 1, k, k, generator=g)
    bias = torch.randn(C, generator=g)
    grad = torch.randn(B, H, W, C, generator=g)
    return x, weight, bias, grad


def _reference(x, weight, bias, grad):
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    k = weight.shape[-1]
    out = F.conv2d(x64.permute(0, 3, 1, 2), w64, b64, padding=k // 2, groups=x.shape[-1]).permute(0, 2, 3, 1)
    out.backward(grad.double())
    return out, x64.grad, w64.grad, b64.grad


def _rel(a, b):
    return (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("C", [1, 16, 17, 120])
def test_gradients_match_float64_conv2d(k, C):
    x, weight, bias, grad = _case(B=3, H=9, W=11, C=C, k=k, seed=k * C)
    ref_out, ref_dx, ref_dw, ref_db = _reference(x, weight, bias, grad)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, weight, bias))
    out = depthwise_conv(xs, ws, bs)
    out.backward(grad)
    assert out.shape == x.shape
    assert _rel(out, ref_out) <= 1e-6
    assert _rel(xs.grad, ref_dx) <= 1e-6
    assert _rel(ws.grad, ref_dw) <= 1e-5
    assert _rel(bs.grad, ref_db) <= 1e-5


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (1, 9), (4, 4)])
def test_maps_smaller_than_the_kernel(shape):
    x, weight, bias, grad = _case(B=2, H=shape[0], W=shape[1], C=20, k=5)
    _, ref_dx, ref_dw, ref_db = _reference(x, weight, bias, grad)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, weight, bias))
    depthwise_conv(xs, ws, bs).backward(grad)
    assert _rel(xs.grad, ref_dx) <= 1e-6 and _rel(ws.grad, ref_dw) <= 1e-5 and _rel(bs.grad, ref_db) <= 1e-5


def test_the_forward_is_torchs_own_and_threads_only_reorder_the_weight_sums():
    x, weight, bias, grad = _case(B=5, H=12, W=12, C=40, k=5)
    conv = torch.nn.Conv2d(40, 40, 5, 1, 2, groups=40)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    assert torch.equal(depthwise_conv(x, weight, bias), conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, weight, bias))
            depthwise_conv(xs, ws, bs).backward(grad)
            grads.append((xs.grad, ws.grad, bs.grad))
    finally:
        torch.set_num_threads(before)
    for dx, dw, db in grads[1:]:
        assert torch.equal(dx, grads[0][0])  # each pixel's input gradient is computed whole by one thread
        assert _rel(dw, grads[0][1].double()) <= 1e-6 and _rel(db, grads[0][2].double()) <= 1e-6


def test_only_the_gradients_asked_for_are_computed():
    x, weight, bias, grad = _case(B=2, H=6, W=6, C=8, k=3)
    ws = weight.clone().requires_grad_()
    depthwise_conv(x, ws, None).backward(grad)  # the input needs no gradient, and there is no bias
    _, _, ref_dw, _ = _reference(x, weight, bias, grad)
    assert _rel(ws.grad, ref_dw) <= 1e-5


def test_what_the_kernel_stands_in_for():
    x = torch.zeros(1, 8, 8, 12)
    assert dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 1, 2, groups=12), x)
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 1, 1, groups=12), x)  # not "same" padding
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 2, 2, groups=12), x)  # strided
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 1, 2, groups=4), x)  # not depthwise
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 9, 1, 4, groups=12), x)  # 9x9 not built
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 1, 2, groups=12, padding_mode="reflect"), x)
    assert not dwconv_kernel_supports(torch.nn.Conv2d(12, 12, 5, 1, 2, groups=12), x.double())


def _mlp_paths(monkeypatch):
    from cka_lab.models import edt as edt_mod

    calls = []
    real = edt_mod.depthwise_conv
    monkeypatch.setattr(edt_mod, "depthwise_conv", lambda *a: calls.append(1) or real(*a))
    return calls


def test_the_mlp_uses_the_kernel_when_gradients_flow_and_the_module_otherwise(monkeypatch):
    torch.manual_seed(0)
    mlp = Mlp(12, 24)
    x = torch.randn(2, 8, 8, 12)
    calls = _mlp_paths(monkeypatch)
    out = mlp(x)
    out.sum().backward()
    assert len(calls) == 1
    k_grads = [p.grad.clone() for p in mlp.parameters()]
    with torch.no_grad():
        assert torch.equal(mlp(x), out.detach())  # eval route: the module, same numbers
    assert len(calls) == 1
    seen = []
    handle = mlp.dwconv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        mlp.zero_grad()
        mlp(x).sum().backward()
    finally:
        handle.remove()
    assert len(calls) == 1 and seen == [(2, 24, 8, 8)]  # hooked: the module ran, the hook saw its output
    for a, b in zip(k_grads, (p.grad for p in mlp.parameters())):
        assert _rel(a, b.double()) <= 1e-5
