"""Fused window attention (SDPA) is the explicit attention, without the maps.

The fused path is the default; it must give the explicit path's outputs (1e-5) and gradients (1e-4
relative, every parameter and the input), for plain and shifted-window blocks, and it must step aside
for the explicit path whenever something needs the map: a hook on ``softmax`` / ``attn_drop``, a global
module hook, attention dropout in training, ``fused_attn = False`` or :func:`explicit_attention`.
The fixture tests in ``test_edt.py`` run with the default, i.e. fused. On the CPU the fused path is the
compiled kernel of :mod:`cka_lab.models.cpu_attention` where it builds, else SDPA: the equalities below
are checked for both (``backend``).
"""

from __future__ import annotations

import pytest
import torch

from cka_lab.models import cpu_kernels, create_edt
from cka_lab.models import edt as edt_mod
from cka_lab.models.edt import CSwinTransformerBlock, WindowAttention, explicit_attention, set_fused_attn, use_fused_attn

from .conftest import cpu_kernels_disabled, train_step, worst_relative_difference


@pytest.fixture(params=["kernel", "sdpa"])
def backend(request):
    """The fused path's backend on the CPU: the compiled kernel or torch's SDPA."""
    if request.param == "kernel":
        if not cpu_kernels.kernel_available():
            pytest.skip("no C++ compiler here: the kernel cannot be built")
        yield request.param
    else:
        with cpu_kernels_disabled():
            yield request.param


def _block(shift: bool, size: int = 48, seed: int = 0) -> CSwinTransformerBlock:
    torch.manual_seed(seed)
    blk = CSwinTransformerBlock(60, 6, (6, 24), shift, 2.0, 0.0, size)
    with torch.no_grad():  # non-trivial weights: logits spread enough that softmax is far from uniform
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return blk


def _tokens(B: int = 2, size: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, size * size, 60, generator=torch.Generator().manual_seed(seed))


def _count_paths(monkeypatch) -> dict:
    calls = {"explicit": 0, "fused": 0}
    explicit, fused = WindowAttention._explicit, WindowAttention.attend_windows

    def spy_explicit(self, qkv, mask):
        calls["explicit"] += 1
        return explicit(self, qkv, mask)

    def spy_fused(self, qkv, mask):
        calls["fused"] += 1
        return fused(self, qkv, mask)

    by_kernel = CSwinTransformerBlock._attend_by_kernel

    def spy_kernel(self, xn, H, W):  # the block's kernel route attends both directions in one call
        calls["fused"] += len(self.attns)
        return by_kernel(self, xn, H, W)

    monkeypatch.setattr(WindowAttention, "_explicit", spy_explicit)
    monkeypatch.setattr(WindowAttention, "attend_windows", spy_fused)
    monkeypatch.setattr(CSwinTransformerBlock, "_attend_by_kernel", spy_kernel)
    return calls


def test_fused_is_the_default_of_new_modules_and_the_environment_can_turn_it_off(monkeypatch):
    monkeypatch.delenv("CKA_LAB_FUSED_ATTN", raising=False)
    assert use_fused_attn()
    model = create_edt("SRx2_EDTT")
    attns = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert len(attns) == 2 * sum(model.config.depths)
    assert all(m.fused_attn and not m.needs_map() for m in attns)
    monkeypatch.setenv("CKA_LAB_FUSED_ATTN", "0")
    assert not use_fused_attn()
    assert not WindowAttention(30, (6, 24), 6).fused_attn
    set_fused_attn(True)  # an explicit setting beats the environment
    try:
        assert WindowAttention(30, (6, 24), 6).fused_attn
    finally:
        set_fused_attn(None)
    assert not use_fused_attn()


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [48, 72])  # 48: the stored masks; 72: masks computed on demand
def test_fused_forward_equals_the_explicit_forward(monkeypatch, backend, shift, size):
    blk = _block(shift, size=48).eval()
    x = _tokens(size=size)
    calls = _count_paths(monkeypatch)
    with torch.no_grad():
        fused = blk(x, (size, size))
        assert calls == {"explicit": 0, "fused": 2}
        with explicit_attention():
            explicit = blk(x, (size, size))
        assert calls == {"explicit": 2, "fused": 2}
    scale = explicit.abs().max().item()
    assert scale > 1.0
    # 1e-5 relative to the output's scale (|x| ~ 20 here, where one float32 step is 2e-6), as for the fixtures
    assert (fused - explicit).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("shift", [False, True])
def test_fused_gradients_equal_the_explicit_gradients(backend, shift):
    blk = _block(shift).train()

    def grads(fused: bool) -> dict[str, torch.Tensor]:
        for m in blk.attns:
            m.fused_attn = fused
        blk.zero_grad(set_to_none=True)
        x = _tokens().requires_grad_()
        out = blk(x, (48, 48))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a loss that weighs every output
        g = {n: p.grad.clone() for n, p in blk.named_parameters()}
        g["input"] = x.grad.clone()
        return g

    fused, explicit = grads(True), grads(False)
    assert set(fused) == set(explicit)
    assert len(fused) == len(list(blk.parameters())) + 1
    for name in explicit:
        scale = explicit[name].abs().max().item()
        assert scale > 0, name
        assert (fused[name] - explicit[name]).abs().max().item() <= 1e-4 * scale, name


def test_a_hook_on_softmax_takes_the_explicit_path_and_sees_the_map(monkeypatch):
    blk = _block(True).eval()
    x = _tokens()
    with torch.no_grad():
        fused = blk(x, (48, 48))
    calls = _count_paths(monkeypatch)
    attn = blk.attns[0]
    seen = []
    handle = attn.softmax.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    try:
        with torch.no_grad():
            hooked = blk(x, (48, 48))
    finally:
        handle.remove()
    assert calls == {"explicit": 1, "fused": 1}  # only the hooked module computes its maps
    (logits, maps), = seen
    B, nW, h, N = 2, 16, 6, 144
    assert maps.shape == (B * nW, h, N, N)
    assert torch.allclose(maps.sum(-1), torch.ones(B * nW, h, N), atol=1e-5)
    assert torch.equal(maps, torch.softmax(logits, -1))
    # the shifted-window mask reaches the map: tokens of different regions get (almost) no weight
    mask = blk.attn_mask_h.repeat(B, 1, 1).unsqueeze(1).expand_as(maps)
    assert maps[mask < 0].max().item() < 1e-20
    assert (hooked - fused).abs().max().item() <= 1e-5 * fused.abs().max().item()
    with torch.no_grad():
        blk(x, (48, 48))
    assert calls == {"explicit": 1, "fused": 3}  # the hook removed: fused again


@pytest.mark.parametrize("kind", ["pre_hook_on_softmax", "hook_on_attn_drop", "global_hook", "global_pre_hook"])
def test_other_hooks_that_could_need_the_map_take_the_explicit_path(monkeypatch, kind):
    blk = _block(False).eval()
    calls = _count_paths(monkeypatch)
    attn = blk.attns[1]
    nn_mod = torch.nn.modules.module
    handle = {
        "pre_hook_on_softmax": lambda: attn.softmax.register_forward_pre_hook(lambda m, i: None),
        "hook_on_attn_drop": lambda: attn.attn_drop.register_forward_hook(lambda m, i, o: None),
        "global_hook": lambda: nn_mod.register_module_forward_hook(lambda m, i, o: None),
        "global_pre_hook": lambda: nn_mod.register_module_forward_pre_hook(lambda m, i: None),
    }[kind]()
    try:
        with torch.no_grad():
            blk(_tokens(B=1), (48, 48))
    finally:
        handle.remove()
    assert calls["explicit"] == (2 if kind.startswith("global") else 1)


def test_attention_dropout_in_training_and_the_asked_switches_take_the_explicit_path(monkeypatch):
    attn = WindowAttention(30, (6, 24), 6, attn_drop=0.1).eval()
    assert attn.needs_map() is False  # eval: dropout is off
    attn.train()
    assert attn.needs_map() is True
    attn.eval()
    with explicit_attention():
        assert attn.needs_map()
        with explicit_attention():
            assert attn.needs_map()
        assert attn.needs_map()
    assert not attn.needs_map()
    model = create_edt("SRx2_EDTT").set_fused_attn(False)
    assert all(not m.fused_attn and m.needs_map() for m in model.modules() if isinstance(m, WindowAttention))
    calls = _count_paths(monkeypatch)
    with torch.no_grad():
        model.eval().forward_task(torch.rand(1, 3, 24, 24), "x2")
    assert calls == {"explicit": 2 * sum(model.config.depths), "fused": 0}


def test_the_whole_model_in_training_mode_gives_the_same_loss_and_gradients_fused_and_explicit(backend):
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", drop_path_rate=0.0).train()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    out_f, g_f = train_step(model, x)
    with explicit_attention():
        out_e, g_e = train_step(model, x)
    assert (out_f - out_e).abs().max().item() <= 1e-5
    assert worst_relative_difference(g_f, g_e) <= 1e-4
    assert edt_mod.use_fused_attn()


def test_the_head_dim_given_to_sdpa_is_padded_for_the_cuda_kernels_only():
    from cka_lab.models.edt import sdpa_head_dim

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [sdpa_head_dim(d, cpu) for d in (5, 10, 15, 16, 30)] == [5, 10, 15, 16, 30]
    assert [sdpa_head_dim(d, cuda) for d in (5, 8, 15, 30)] == [8, 8, 16, 32]


def test_bf16_autocast_is_offered_only_where_the_hardware_runs_it():
    from cka_lab.errors import CkaLabError
    from cka_lab.models.edt import bf16_autocast, cpu_bf16_supported

    if cpu_bf16_supported():
        with bf16_autocast("cpu"):
            y = torch.nn.Linear(8, 8)(torch.rand(2, 8))
        assert y.dtype == torch.bfloat16
    else:
        with pytest.raises(CkaLabError, match="no native bfloat16"):
            bf16_autocast("cpu")
    with pytest.raises(CkaLabError, match="not meta"):
        bf16_autocast("meta")


def test_fused_attention_under_cpu_bf16_autocast_agrees_with_the_explicit_path_to_bf16_precision():
    from cka_lab.models.edt import bf16_autocast, cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    blk = _block(True, seed=2).train()
    x = _tokens(B=1)

    def run():
        blk.zero_grad(set_to_none=True)
        with bf16_autocast("cpu"):
            out = blk(x, (48, 48))
        out.float().square().mean().backward()
        return out.float().detach(), blk.qkv.weight.grad.clone()

    out_f, g_f = run()
    with explicit_attention():
        out_e, g_e = run()
    assert (out_f - out_e).abs().max().item() <= 0.02 * out_e.abs().max().item()  # bf16 keeps 8 bits
    assert ((g_f - g_e).norm() / g_e.norm()).item() < 0.05


def test_a_bfloat16_block_keeps_its_dtype_and_agrees_with_float32_to_bf16_precision(backend):
    blk = _block(True, seed=4).train()
    x = _tokens(B=1)
    ref = blk(x, (48, 48)).detach()
    blk16 = _block(True, seed=4).train().bfloat16()
    x16 = x.bfloat16().requires_grad_()
    out = blk16(x16, (48, 48))
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and x16.grad.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item()  # bf16 keeps 8 bits


@pytest.mark.parametrize("shift", [None, (3, 12)])
def test_window_tokens_are_the_rolled_window_partition_and_the_gather_backward_is_the_inverse(shift):
    from cka_lab.models.edt import gather_tokens, window_partition, window_tokens

    B, H, W, C = 2, 24, 48, 4
    x = torch.randn(B, H * W, C, requires_grad=True)
    perm, inv = window_tokens(H, W, (6, 24), shift, "cpu")
    img = x.detach().view(B, H, W, C)
    if shift is not None:
        img = torch.roll(img, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    expected = window_partition(img, 6, 24).reshape(B, H * W, C)
    got = gather_tokens(x, perm, inv)
    assert torch.equal(got, expected)
    assert torch.equal(gather_tokens(got, inv, perm), x.detach())
    g = torch.randn_like(got)
    got.backward(g)
    assert torch.equal(x.grad, g[:, inv])


def test_the_block_takes_the_window_major_route_unless_something_needs_the_modules(monkeypatch):
    blk = _block(True).eval()
    assert blk.window_major()
    h = blk.attns[0].register_forward_hook(lambda m, i, o: None)  # a hook on a module that route skips
    assert not blk.window_major()
    h.remove()
    h = blk.qkv.register_forward_pre_hook(lambda m, i: None)
    assert not blk.window_major()
    h.remove()
    assert blk.window_major()


def test_caches_built_under_inference_mode_serve_a_later_training_step():
    """Masks and token orders are cached; the first call may come from an inference_mode analysis."""
    blk = _block(True)
    x = _tokens(B=1, size=72)  # a size no other test caches first
    with torch.inference_mode():
        blk.eval()(x, (72, 72))
    blk.train()
    out = blk(x.clone().requires_grad_(), (72, 72))
    out.sum().backward()  # would raise "Inference tensors cannot be saved for backward"
    assert blk.qkv.weight.grad is not None
