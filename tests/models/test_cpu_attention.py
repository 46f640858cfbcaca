"""The compiled CPU window-attention kernel is softmax(q k^T * scale + mask) v and its gradient.

Checked against float64 autograd of the explicit formula (hand-written below, independent of the model
code) over head sizes 1-16, window sizes that are and are not multiples of the 16-lane vectors, masks
shared by several windows, extreme logits (weights that underflow must be exact zeros), thread counts
(results must not depend on them) and the fallbacks (disabled, no compiler, unsupported shapes).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cka_lab.models import cpu_attention as ca
from cka_lab.models import cpu_kernels as ck
from cka_lab.models import create_edt
from cka_lab.models import edt as edt_mod
from cka_lab.models.edt import use_cpu_kernel

from .conftest import cpu_kernels_disabled, train_step, worst_relative_difference

pytestmark = pytest.mark.skipif(not ck.kernel_available(), reason="no C++ compiler here: the kernel cannot be built")


def _reference(qkv: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """float64 ``softmax(q k^T * scale + mask) v``: ``(W, N, 3, h, d) -> (W, N, h, d)``."""
    q, k, v = (u.transpose(1, 2) for u in qkv.unbind(2))  # (W, h, N, d)
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        W, nwm = qkv.shape[0], mask.shape[0]
        s = s + mask.to(s.dtype).repeat(W // nwm, 1, 1).unsqueeze(1)
    return (torch.softmax(s, -1) @ v).transpose(1, 2)


def _case(W, N, h, d, nwm=None, spread=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(W, N, 3, h, d, generator=g) * spread
    mask = None
    if nwm:
        allowed = torch.rand(nwm, N, N, generator=g) < 0.6
        allowed |= torch.eye(N, dtype=torch.bool)  # every row keeps a key
        mask = torch.zeros(nwm, N, N).masked_fill_(~allowed, float("-inf"))
    grad = torch.randn(W, N, h, d, generator=g)
    return qkv, mask, grad


def _check(qkv, mask, grad, scale, fwd_tol=3e-6, bwd_tol=2e-5):
    x64 = qkv.double().requires_grad_()
    ref = _reference(x64, mask, scale)
    ref.backward(grad.double())
    x = qkv.clone().requires_grad_()
    out = ca.window_attention(x, mask, scale)
    out.backward(grad)
    assert out.shape == ref.shape and out.dtype == torch.float32
    out_err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
    grad_err = (x.grad.double() - x64.grad).abs().max().item() / x64.grad.abs().max().item()
    assert out_err <= fwd_tol, out_err
    assert grad_err <= bwd_tol, grad_err
    return out, x.grad


@pytest.mark.parametrize("d", [1, 3, 5, 8, 10, 15, 16])
def test_forward_and_gradients_match_float64_for_every_head_size(d):
    qkv, mask, grad = _case(W=4, N=37, h=2, d=d, nwm=2)
    _check(qkv, mask, grad, d**-0.5)


@pytest.mark.parametrize("N", [1, 2, 15, 16, 17, 144, 200])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_gradients_match_float64_for_window_sizes_around_the_vector_width(N, masked):
    qkv, mask, grad = _case(W=2, N=N, h=3, d=5, nwm=1 if masked else None, seed=N)
    _check(qkv, mask, grad, 5**-0.5)


def test_edt_t_shapes_with_the_shifted_window_mask_of_a_block():
    from cka_lab.models.edt import window_mask

    B, H, Wd, window, shift = 2, 48, 48, (6, 24), (3, 12)
    official = window_mask(H, Wd, window, shift)  # (nW, N, N): -100 across regions, as the official code
    mask = torch.zeros_like(official).masked_fill_(official < 0, float("-inf")).repeat(B, 1, 1)  # as a block passes it
    assert torch.isinf(mask).any() and not torch.isinf(mask).all(-1).any()
    qkv, _, grad = _case(W=mask.shape[0], N=144, h=6, d=5)
    _check(qkv, mask, grad, 5**-0.5)


def test_a_mask_shared_by_windows_is_used_periodically():
    qkv, mask, grad = _case(W=6, N=20, h=2, d=4, nwm=3)
    out, _ = _check(qkv, mask, grad, 0.5)
    full = mask.repeat(2, 1, 1)  # the same masks given once per window
    assert torch.equal(ca.window_attention(qkv, full, 0.5), out)


def test_extreme_logits_underflow_to_exact_zeros_and_stay_as_accurate_as_sdpa():
    # logits spread over hundreds: most weights underflow (exp < e^-87) and must be exact zeros, not
    # denormals; float32 logits of ~500 carry rounding of ~3e-5, so the bound is SDPA's own error
    qkv, _, grad = _case(W=2, N=33, h=1, d=8, spread=12.0)
    x64 = qkv.double().requires_grad_()
    ref = _reference(x64, None, 1.0)
    ref.backward(grad.double())
    x = qkv.clone().requires_grad_()
    q, k, v = (u.transpose(1, 2) for u in x.unbind(2))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2)
    sdpa.backward(grad)
    sdpa_err = (sdpa.double() - ref).abs().max().item() / ref.abs().max().item()
    sdpa_grad_err = (x.grad.double() - x64.grad).abs().max().item() / x64.grad.abs().max().item()
    assert sdpa_err > 1e-6 and sdpa_grad_err > 1e-5  # the case is hard for float32
    _check(qkv, None, grad, 1.0, fwd_tol=1.5 * sdpa_err, bwd_tol=1.5 * sdpa_grad_err)


def test_masked_keys_get_exactly_zero_weight_and_zero_gradient():
    qkv, _, grad = _case(W=1, N=24, h=2, d=5)
    mask = torch.zeros(1, 24, 24)
    mask[0, :, 7] = float("-inf")  # key 7 hidden from every query (its own row keeps the others)
    x = qkv.clone().requires_grad_()
    out = ca.window_attention(x, mask, 0.4)
    out.backward(grad)
    assert torch.count_nonzero(x.grad[0, 7, 1:]) == 0  # d/dk and d/dv of the hidden key: exactly 0
    assert torch.count_nonzero(x.grad[0, 7, 0]) > 0  # its query still attends
    changed = qkv.clone()
    changed[0, 7, 2] += 100.0  # its value: no effect on any output
    assert torch.equal(ca.window_attention(changed, mask, 0.4), out.detach())


def test_results_do_not_depend_on_the_number_of_threads():
    qkv, mask, grad = _case(W=8, N=144, h=6, d=5, nwm=4)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            x = qkv.clone().requires_grad_()
            out = ca.window_attention(x, mask, 0.3)
            out.backward(grad)
            results.append((out.detach(), x.grad))
    finally:
        torch.set_num_threads(before)
    for out, g in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(g, results[0][1])


def test_non_contiguous_inputs_and_gradients_are_accepted():
    qkv, mask, grad = _case(W=3, N=17, h=2, d=5, nwm=3)
    wide = torch.zeros(3, 17, 3, 2, 7)
    wide[..., :5] = qkv
    x = wide[..., :5]  # a strided view
    assert not x.is_contiguous()
    out = ca.window_attention(x, mask, 0.5)
    assert torch.equal(out, ca.window_attention(qkv, mask, 0.5))
    x = qkv.clone().requires_grad_()
    ca.window_attention(x, mask, 0.5).backward(grad.transpose(0, 1).contiguous().transpose(0, 1))
    y = qkv.clone().requires_grad_()
    ca.window_attention(y, mask, 0.5).backward(grad)
    assert torch.equal(x.grad, y.grad)


def test_bad_inputs_get_one_clear_error():
    qkv, mask, _ = _case(W=4, N=9, h=1, d=3, nwm=2)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        ca.window_attention(qkv.double(), mask, 1.0)
    with pytest.raises(ValueError, match="nWm dividing"):
        ca.window_attention(qkv, torch.zeros(3, 9, 9), 1.0)
    with pytest.raises(ValueError, match="no gradient for the mask"):
        ca.window_attention(qkv, torch.zeros(2, 9, 9, requires_grad=True), 1.0)
    assert not ca.kernel_supports(144, 17) and not ca.kernel_supports(2000, 5) and ca.kernel_supports(144, 5)
    with pytest.raises(RuntimeError, match="not available for N=9, d=17"):
        ca.window_attention(torch.zeros(1, 9, 3, 1, 17), None, 1.0)


def _token_reference(qkv, bias, groups, lepe, out_width):
    """float64 reference of ``attend_token_windows``: gather each group's windows, attend, add LePE by
    ``F.conv2d`` per window, scatter back."""
    M, ld = qkv.shape
    x = qkv + bias if bias is not None else qkv
    out = qkv.new_zeros(M, out_width)
    for g, lp in zip(groups, lepe):
        (wh, ww), h, d, N = g.window, g.heads, g.head_dim, g.tokens
        rows = g.rows if g.rows is not None else torch.arange(M)
        xw = x[rows].view(M // N, N, ld)
        q, k, v = (xw[..., c : c + h * d].reshape(M // N, N, h, d) for c in (g.q_col, g.k_col, g.v_col))
        o = _reference(torch.stack([q, k, v], 2), g.mask, g.scale).reshape(M // N, N, h * d)
        if lp is not None:
            img = v.reshape(M // N, N, h * d).transpose(1, 2).reshape(-1, h * d, wh, ww)
            o = o + torch.nn.functional.conv2d(img, lp[0], lp[1], padding=1, groups=h * d).flatten(2).transpose(1, 2)
        out = out.index_put((rows.view(-1, 1), torch.arange(g.out_col, g.out_col + h * d).view(1, -1)), o.reshape(M, h * d))
    return out


def _token_case(seed=0):
    """Two groups over 6 images' worth of rows: (3, 8) and (8, 3) windows, heads of 5, rows permuted,
    a mask on the second group, q/k/v columns interleaved as EDT's block lays them out, LePE on both."""
    g = torch.Generator().manual_seed(seed)
    N, W, h, d = 24, 6, 2, 5
    M, half = N * W, h * d
    ld = 6 * half
    qkv = torch.randn(M, ld, generator=g) * 2
    bias = torch.randn(ld, generator=g)
    allowed = (torch.rand(3, N, N, generator=g) < 0.6) | torch.eye(N, dtype=torch.bool)
    mask = torch.zeros(3, N, N).masked_fill_(~allowed, float("-inf"))
    groups = [
        ca.WindowGroup(torch.randperm(M, generator=g), window, h, d, j * half, 2 * half + j * half,
                       4 * half + j * half, j * half, 0.45, mask if j else None)
        for j, window in enumerate([(3, 8), (8, 3)])
    ]
    lepe = [(torch.randn(half, 1, 3, 3, generator=g), torch.randn(half, generator=g)) for _ in range(2)]
    return qkv, bias, groups, lepe, torch.randn(M, 2 * half, generator=g)


def test_token_windows_with_rows_bias_masks_and_lepe_match_float64():
    qkv, bias, groups, lepe, grad = _token_case()
    leaves64 = [t.double().requires_grad_() for t in (qkv, bias, *lepe[0], *lepe[1])]
    groups64 = [ca.WindowGroup(g.rows, g.window, g.heads, g.head_dim, g.q_col, g.k_col, g.v_col, g.out_col, g.scale,
                               g.mask.double() if g.mask is not None else None) for g in groups]
    ref = _token_reference(leaves64[0], leaves64[1], groups64, [leaves64[2:4], leaves64[4:6]], grad.shape[1])
    ref.backward(grad.double())
    leaves = [t.clone().requires_grad_() for t in (qkv, bias, *lepe[0], *lepe[1])]
    out = ca.attend_token_windows(leaves[0], leaves[1], groups, [tuple(leaves[2:4]), tuple(leaves[4:6])], grad.shape[1])
    out.backward(grad)
    assert (out.double() - ref).abs().max().item() <= 3e-6 * ref.abs().max().item()
    for name, a, b in zip(("qkv", "bias", "lepe w0", "lepe b0", "lepe w1", "lepe b1"), leaves, leaves64):
        assert (a.grad.double() - b.grad).abs().max().item() <= 2e-5 * b.grad.abs().max().item(), name


def test_token_windows_results_do_not_depend_on_the_number_of_threads():
    qkv, bias, groups, lepe, grad = _token_case(seed=1)
    before, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in (qkv, bias, *lepe[0], *lepe[1])]
            out = ca.attend_token_windows(leaves[0], leaves[1], groups, [tuple(leaves[2:4]), tuple(leaves[4:6])], 20)
            out.backward(grad)
            results.append([out.detach()] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


def test_token_windows_check_their_groups():
    qkv, bias, groups, lepe, _ = _token_case()
    with pytest.raises(ValueError, match="must tile"):
        ca.attend_token_windows(qkv, bias, groups[:1], lepe[:1], 20)  # half the output columns
    with pytest.raises(ValueError, match="2 groups but 1 LePE"):
        ca.attend_token_windows(qkv, bias, groups, lepe[:1], 20)
    with pytest.raises(ValueError, match="rows must be"):
        bad = ca.WindowGroup(groups[0].rows[:-1], (3, 8), 2, 5, 0, 20, 40, 0, 0.4)
        ca.attend_token_windows(qkv, bias, [bad, groups[1]], lepe, 20)
    for rows in (groups[0].rows.clone().fill_(0), groups[0].rows + 1, -groups[0].rows):  # repeated, past M, negative
        with pytest.raises(ValueError, match="each of the 144 rows of qkv exactly once"):
            bad = ca.WindowGroup(rows, (3, 8), 2, 5, 0, 20, 40, 0, 0.4)
            ca.attend_token_windows(qkv, bias, [bad, groups[1]], lepe, 20)
    rows = groups[0].rows.clone()
    ca.attend_token_windows(qkv, bias, [ca.WindowGroup(rows, (3, 8), 2, 5, 0, 20, 40, 0, 0.4), groups[1]], lepe, 20)
    rows[0] = rows[1]  # changed in place after it was checked: checked again
    with pytest.raises(ValueError, match="exactly once"):
        ca.attend_token_windows(qkv, bias, [ca.WindowGroup(rows, (3, 8), 2, 5, 0, 20, 40, 0, 0.4), groups[1]], lepe, 20)
    with pytest.raises(ValueError, match="outside qkv"):
        bad = ca.WindowGroup(groups[0].rows, (3, 8), 2, 5, 0, 20, 55, 0, 0.4)
        ca.attend_token_windows(qkv, bias, [bad, groups[1]], lepe, 20)
    with pytest.raises(ValueError, match="overlap"):
        bad = ca.WindowGroup(groups[0].rows, (3, 8), 2, 5, 10, 20, 40, 0, 0.4)  # q over the other group's q
        ca.attend_token_windows(qkv, bias, [bad, groups[1]], lepe, 20)
    with pytest.raises(ValueError, match="LePE weight"):
        ca.attend_token_windows(qkv, bias, groups, [lepe[0], (lepe[1][0][:5], lepe[1][1])], 20)


def test_the_model_uses_the_kernel_on_the_cpu_in_float32_and_sdpa_otherwise():
    qkv = torch.zeros(2, 144 * 16, 90)
    assert use_cpu_kernel(qkv, None, 144, 5)
    assert use_cpu_kernel(qkv.bfloat16(), None, 144, 5)  # bf16 autocast: attended in float32
    assert not use_cpu_kernel(qkv.double(), None, 144, 5)  # float64 (tests, references): SDPA
    assert not use_cpu_kernel(qkv, torch.zeros(1, 1, 144, 144, requires_grad=True), 144, 5)
    assert not use_cpu_kernel(qkv, None, 144, 32)  # heads wider than 16


def test_under_torch_compile_the_model_keeps_sdpa_and_the_conv_module(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as while dynamo traces the model
    assert not use_cpu_kernel(torch.zeros(2, 144 * 16, 90), None, 144, 5)
    calls = []
    monkeypatch.setattr(edt_mod, "gelu_dwconv_gelu", lambda *a: calls.append(a))
    mlp = edt_mod.Mlp(12, 24)
    mlp(torch.randn(1, 6, 6, 12)).sum().backward()
    assert not calls


def test_disabled_by_the_environment_the_model_takes_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(edt_mod, "window_attention", lambda *a: calls.append(a))
    with cpu_kernels_disabled():
        assert not ck.kernel_enabled() and not ck.kernel_available()
        model = create_edt("SRx2_EDTT").eval()
        with torch.no_grad():
            out = model.forward_task(torch.rand(1, 3, 24, 24), "x2")
        assert out.shape == (1, 3, 48, 48) and not calls
    assert ck.kernel_available()


def test_the_model_gives_the_same_outputs_and_gradients_by_the_kernel_and_by_sdpa():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", drop_path_rate=0.0).train()
    with torch.no_grad():
        for p in model.parameters():  # far from uniform attention
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    out_k, g_k = train_step(model, x)
    with cpu_kernels_disabled():
        out_s, g_s = train_step(model, x)
    assert (out_k - out_s).abs().max().item() <= 1e-5 * out_s.abs().max().item()
    assert worst_relative_difference(g_k, g_s) <= 1e-4


def test_the_build_is_cached_and_a_failing_compiler_is_reported(tmp_path, monkeypatch):
    lib = ck.build_kernel(tmp_path)
    stamp = lib.stat().st_mtime_ns
    assert ck.build_kernel(tmp_path) == lib and lib.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]  # no temporary files left
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match="false"):
        ck.build_kernel(tmp_path / "other")
    assert not list((tmp_path / "other").glob("*.so*"))
    monkeypatch.setenv("CKA_LAB_CACHE", str(tmp_path / "cache"))
    ck.reset_kernel()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not ck.kernel_available()
        assert len(caught) == 1 and "using torch's operators" in str(caught[0].message)
    finally:
        monkeypatch.delenv("CXX")
        monkeypatch.delenv("CKA_LAB_CACHE")
        ck.reset_kernel()
    assert ck.kernel_available()
