"""EDT: the encoder-decoder window-attention transformer of Li et al. (arXiv 2112.10175).

A re-implementation that is state-dict compatible with the official checkpoints and numerically
identical to the official forward pass (checked against reference outputs of the official code).

Layout (module names equal the official ones, so layer lists mean the same thing for both)::

    head_<task>   ModuleList  conv3x3 -> DEPTH x ResBlockDown -> conv3x3 (-> embed_dim)
    body          SwinBody    tokens -> LayerNorm -> RSTB x len(depths) -> LayerNorm -> conv3x3 (+ input)
      body.layers.i.residual_group.blocks.j   CSwinTransformerBlock (odd j: shifted windows)
        .attns.0 / .attns.1                    WindowAttention, horizontal (6x24) / vertical (24x6) strips
        .attns.k.softmax                       nn.Softmax: hook it to read attention weights
        .attn_residual                         nn.Identity tap: the state after the attention residual
    tail_<task>   ModuleList  DEPTH x (ResBlockSkip | UpResBlock) -> upsampler / conv3x3

Tensor shapes below use B batch, C channels, H x W spatial size, L = H*W tokens, nW windows,
N tokens per window, h heads, d head dim.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cka_lab.errors import CkaLabError
from cka_lab.models.bounds import available_memory, check_fits, stored_mask_bytes
from cka_lab.models.cpu_attention import WindowGroup, attend_token_windows, kernel_supports, transposed_mask, window_attention
from cka_lab.models.cpu_mlp import gelu_dwconv_gelu, mlp_kernel_supports
from cka_lab.models.init import init_edt_weights, stable_generator
from cka_lab.models.registry import EDTConfig, TaskHead, config_from_name
from cka_lab.runtime import env_switch

__all__ = [
    "EDT",
    "create_edt",
    "WindowAttention",
    "CSwinTransformerBlock",
    "BasicLayer",
    "RSTB",
    "SwinBody",
    "window_mask",
    "use_cpu_kernel",
    "window_tokens",
    "gather_tokens",
    "mirror_pad",
    "use_fused_attn",
    "set_fused_attn",
    "explicit_attention",
    "sdpa_head_dim",
    "cpu_bf16_supported",
    "bf16_autocast",
    "compile_for_training",
]


# --------------------------------------------------------------------------------------------------
# Convolutional head and tail blocks
# --------------------------------------------------------------------------------------------------


class ResBlockDown(nn.Module):
    """Residual conv block ``shortcut(x) + lrelu(conv_2(lrelu(conv_1(x))))``, optionally downsampling.

    ``(B, Cin, H, W) -> (B, Cout, H, W)``; with ``down=True`` it returns
    ``(conv_down(y): (B, Cout, H/2, W/2), y: (B, Cout, H, W))``, the second being the skip.
    """

    def __init__(self, in_ch: int, out_ch: int, down: bool = False):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.relu_1 = nn.LeakyReLU(0.2)
        self.conv_2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.relu_2 = nn.LeakyReLU(0.2)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, 1, 0)
        self.down = down
        if down:
            self.conv_down = nn.Conv2d(out_ch, out_ch, 4, 2, 1, bias=False)

    def forward(self, x: Tensor):
        y = self.shortcut(x) + self.relu_2(self.conv_2(self.relu_1(self.conv_1(x))))
        if self.down:
            return self.conv_down(y), y
        return y


class ResBlockUp(nn.Module):
    """Residual conv block ``shortcut(x) + lrelu(conv_2(lrelu(conv_1(x))))``: (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.relu_1 = nn.LeakyReLU(0.2)
        self.conv_2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.relu_2 = nn.LeakyReLU(0.2)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.relu_2(self.conv_2(self.relu_1(self.conv_1(x))))


class ResBlockSkip(nn.Module):
    """Decoder block at constant resolution: conv3x3, concat the encoder skip, ResBlockUp.

    ``x: (B, Cin, H, W), skip: (B, Cout, H, W) -> (B, Cout, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.block = ResBlockUp(out_ch * 2, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.conv(x), skip], dim=1))


class UpResBlock(nn.Module):
    """Decoder block that doubles the resolution: ConvTranspose2d(k2, s2), concat the skip, ResBlockUp.

    ``x: (B, Cin, H, W), skip: (B, Cout, 2H, 2W) -> (B, Cout, 2H, 2W)``.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, 2)
        self.block = ResBlockUp(out_ch * 2, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class Upsample(nn.Sequential):
    """Pixel-shuffle upsampler: (conv3x3 -> 4C, PixelShuffle(2)) x log2(s), or conv -> 9C, PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise CkaLabError(f"unsupported SR scale {scale}: use 2, 3 or 4")
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """Lightweight upsampler: one conv3x3 to ``out_ch * s**2`` channels then PixelShuffle(s)."""

    def __init__(self, scale: int, num_feat: int, out_ch: int):
        super().__init__(nn.Conv2d(num_feat, out_ch * scale**2, 3, 1, 1), nn.PixelShuffle(scale))


# --------------------------------------------------------------------------------------------------
# Window attention
# --------------------------------------------------------------------------------------------------


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """``(B, H, W, C) -> (B*nW, wh*ww, C)``, windows row-major, tokens row-major inside a window."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: Tensor, wh: int, ww: int, H: int, W: int) -> Tensor:
    """``(B*nW, wh*ww, C) -> (B, H, W, C)``, the inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def window_mask(H: int, W: int, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """Additive mask ``(nW, N, N)`` of a shifted window partition: -100 between regions, else 0.

    Built like Swin's: after rolling by ``-shift``, windows at the bottom/right borders hold tokens
    from different image regions, which must not attend to each other.
    """
    wh, ww = window
    sh, sw = shift
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, wh, ww).squeeze(-1)  # (nW, N)
    diff = win.unsqueeze(1) - win.unsqueeze(2)  # (nW, N, N)
    return diff.ne(0).float() * -100.0


@lru_cache(maxsize=8)
def _cached_mask(H: int, W: int, window: tuple[int, int], shift: tuple[int, int], device: str) -> Tensor:
    """Read-only masks shared by all shifted blocks for one input size (the official code recomputes them).

    Built outside inference mode: a cached tensor made under ``torch.inference_mode`` could not be saved
    for a later backward (the same holds for every cache below).
    """
    with torch.inference_mode(False):
        return window_mask(H, W, window, shift).to(device)


@lru_cache(maxsize=16)
def window_tokens(H: int, W: int, window: tuple[int, int], shift: tuple[int, int] | None, device: str) -> tuple[Tensor, Tensor]:
    """Token order of a (shifted) window partition: ``perm, inv``, two ``(H*W,)`` int64 permutations.

    ``tokens[:, perm]`` of ``(B, H*W, C)`` row-major tokens are the tokens of the windows of the image
    rolled by ``-shift`` (window after window, row-major inside a window: the order of
    :func:`window_partition`); ``windowed[:, inv]`` puts them back (and so undoes the roll).
    """
    with torch.inference_mode(False):  # cached: see _cached_mask
        idx = torch.arange(H * W).view(1, H, W, 1)
        if shift is not None:
            idx = torch.roll(idx, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        perm = window_partition(idx, *window).reshape(-1)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(H * W)
        return perm.to(device), inv.to(device)


@lru_cache(maxsize=16)
def _batch_mask(H: int, W: int, window: tuple[int, int], shift: tuple[int, int], B: int, device: str) -> Tensor:
    """``(B*nW, 1, N, N)`` additive float32 mask of a shifted window partition: 0 where a query may see
    a key, ``-inf`` elsewhere (read-only, shared).

    The official -100 would leave weights of exp(-100) ~ 4e-44, float32 denormals that make the CPU
    kernel's backward 4-5x slower; ``-inf`` makes them exact zeros (a difference below float32
    resolution). Every row keeps its own region, so no row is all ``-inf``. Given as floats, not as a
    boolean mask, which the kernel would convert on every call.
    """
    with torch.inference_mode(False):  # cached: see _cached_mask
        m = _cached_mask(H, W, window, shift, device)  # (nW, N, N), -100 across regions
        m = torch.zeros_like(m).masked_fill_(m.ne(0), float("-inf"))
        return m.unsqueeze(0).expand(B, *m.shape).reshape(-1, 1, *m.shape[1:])


@lru_cache(maxsize=16)
def _kernel_mask(H: int, W: int, window: tuple[int, int], shift: tuple[int, int], device: str) -> tuple[Tensor, Tensor]:
    """The shifted-window mask as the CPU kernel takes it: ``(nW, N, N)`` additive float32, 0 or ``-inf``
    (see :func:`_batch_mask`), and its :func:`~cka_lab.models.cpu_attention.transposed_mask` (read-only, shared)."""
    with torch.inference_mode(False):  # cached: see _cached_mask
        m = _cached_mask(H, W, window, shift, device)
        m = torch.zeros_like(m).masked_fill_(m.ne(0), float("-inf"))
        return m, transposed_mask(m)


@lru_cache(maxsize=32)
def _flat_tokens(perm: Tensor, inv: Tensor, B: int) -> tuple[Tensor, Tensor]:
    """``perm``/``inv`` of :func:`window_tokens` for ``B`` images flattened to ``(B*L,)`` rows."""
    with torch.inference_mode(False):  # cached: see _cached_mask
        L = perm.numel()
        offsets = torch.arange(B, device=perm.device).view(-1, 1) * L
        return (perm.view(1, -1) + offsets).reshape(-1), (inv.view(1, -1) + offsets).reshape(-1)


class _GatherTokens(torch.autograd.Function):
    """``x[:, perm]`` along the token axis of ``(B, L, C)``, ``perm`` a permutation with inverse ``inv``.

    Done as one ``index_select`` over the flattened ``(B*L, C)`` rows (on the CPU 6-7x faster than along
    dim 1, about a plain copy); its backward is the gather by ``inv`` (``index_select``'s own backward
    is a slower scatter-add).
    """

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inv: Tensor) -> Tensor:
        B, L, C = x.shape
        fwd, bwd = _flat_tokens(perm, inv, B)
        ctx.save_for_backward(bwd)
        return x.reshape(B * L, C).index_select(0, fwd).view(B, L, C)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (bwd,) = ctx.saved_tensors
        B, L, C = grad.shape
        return grad.reshape(B * L, C).index_select(0, bwd).view(B, L, C), None, None


def gather_tokens(x: Tensor, perm: Tensor, inv: Tensor) -> Tensor:
    """``(B, L, C) -> (B, L, C)``: ``x[:, perm]``, differentiable (see :class:`_GatherTokens`)."""
    return _GatherTokens.apply(x, perm, inv)


_FUSED_DEFAULT: bool | None = None  # set_fused_attn() override; None: the CKA_LAB_FUSED_ATTN variable decides
_FORCE_EXPLICIT = 0  # > 0 inside explicit_attention()


def use_fused_attn() -> bool:
    """The default attention path of new :class:`WindowAttention` modules: fused (SDPA) unless disabled.

    ``CKA_LAB_FUSED_ATTN=0`` in the environment (or :func:`set_fused_attn(False) <set_fused_attn>`)
    makes new modules compute explicit attention maps. Either path gives the same numbers (to float32
    rounding); the explicit one is taken anyway whenever something needs the map (see
    :meth:`WindowAttention.needs_map`).
    """
    if _FUSED_DEFAULT is not None:
        return _FUSED_DEFAULT
    return env_switch("CKA_LAB_FUSED_ATTN")


def set_fused_attn(enable: bool | None) -> None:
    """Override the default of :func:`use_fused_attn` for modules built from now on (None: back to the env)."""
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = None if enable is None else bool(enable)


@contextmanager
def explicit_attention():
    """Inside this block every :class:`WindowAttention` computes (and passes through ``softmax``) its maps."""
    global _FORCE_EXPLICIT
    _FORCE_EXPLICIT += 1
    try:
        yield
    finally:
        _FORCE_EXPLICIT -= 1


def use_cpu_kernel(qkv: Tensor, mask: Tensor | None, N: int, d: int) -> bool:
    """True when :meth:`WindowAttention.attend_windows` attends by the compiled CPU kernel
    (:mod:`cka_lab.models.cpu_attention`): float32 or bfloat16 ``qkv`` on the CPU, a mask without gradient,
    heads of at most 16 channels, not under ``torch.compile`` (which traces SDPA, not a ctypes call), and the
    kernel enabled and built (else torch's SDPA)."""
    return (
        qkv.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and qkv.dtype in (torch.float32, torch.bfloat16)
        and (mask is None or not mask.requires_grad)
        and kernel_supports(N, d)
    )


def sdpa_head_dim(d: int, device: torch.device) -> int:
    """The head dimension given to SDPA: ``d`` zero-padded to what the fast kernels want (exact).

    CUDA: a multiple of 8 (the flash / memory-efficient kernels' requirement). CPU: ``d`` itself:
    torch's CPU flash kernel takes any head size, and EDT-T's 5 runs forward + backward in 0.63x the
    time of 5 padded to 16 (48 px, batch 16, 2 threads; ``benchmarks/train_speed.py``).
    """
    if device.type == "cuda":
        return -(-d // 8) * 8
    return d


@lru_cache(maxsize=1)
def cpu_bf16_supported() -> bool:
    """True when this CPU runs bfloat16 matmuls natively (AVX512-BF16 / AMX), checked by a tiny product.

    Without native support bf16 autocast on the CPU is emulated and slower than float32.
    """
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    if not native:
        return False
    try:
        a = torch.linspace(-1, 1, 64 * 64).view(64, 64)
        prod = (a.bfloat16() @ a.bfloat16()).float()
        return bool(torch.allclose(prod, a @ a, rtol=0.05, atol=0.05))
    except RuntimeError:
        return False


def bf16_autocast(device: torch.device | str):
    """``torch.autocast`` in bfloat16 for training on ``device`` (CUDA with bf16, or a CPU with native bf16).

    Raises :class:`CkaLabError` in one line where bf16 would be emulated (slow) or unsupported.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise CkaLabError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support: train in float32")
    elif device.type == "cpu":
        if not cpu_bf16_supported():
            raise CkaLabError("this CPU has no native bfloat16 (AVX512-BF16 or AMX): train in float32")
    else:
        raise CkaLabError(f"bf16 autocast is offered on cpu and cuda, not {device.type}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_for_training(model: nn.Module) -> nn.Module:
    """``torch.compile`` for training at one patch size (static shapes; the first steps compile).

    Returns the compiled module (it shares parameters with ``model``; save ``model``, not the result).
    """
    return torch.compile(model, dynamic=False)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    """Hooks registered with ``nn.modules.module.register_module_forward_(pre_)hook`` (they see every module)."""
    mod = nn.modules.module
    return bool(getattr(mod, "_global_forward_hooks", None) or getattr(mod, "_global_forward_pre_hooks", None))


class WindowAttention(nn.Module):
    """Multi-head self-attention in non-overlapping ``(wh, ww)`` windows of one channel half, with LePE.

    LePE (locally-enhanced positional encoding) is a depthwise 3x3 conv of V applied per window
    (zero padding at window borders) and added to ``attn @ v``. The attention probabilities are the
    output of the ``softmax`` submodule, shape ``(B*nW, h, N, N)``: hook it to analyse attention.

    Two paths give the same result (to float32 rounding), in the manner of timm's ``fused_attn``:

    * fused (``self.fused_attn``, the default, see :func:`use_fused_attn`): the ``(N, N)`` maps are
      never stored. On the CPU (float32, or bf16 attended in float32) cka_lab's compiled kernel
      (:mod:`cka_lab.models.cpu_attention`, see :func:`use_cpu_kernel`); elsewhere, or where it cannot be
      built, ``F.scaled_dot_product_attention`` with ``scale=`` and the shifted-window mask as an additive
      float mask, the head dimension zero-padded to what its fast kernels want (:func:`sdpa_head_dim`;
      exact: zeros add nothing to ``q . k`` and the padded output columns are dropped).
    * explicit: ``softmax(q k^T * scale + mask) @ v`` through the ``softmax`` and ``attn_drop``
      submodules. Taken whenever :meth:`needs_map` says so: a forward hook or pre-hook on ``softmax``
      or ``attn_drop`` (or a global module hook), active attention dropout in training,
      ``fused_attn = False``, or inside :func:`explicit_attention`.
    """

    def __init__(self, dim: int, window: tuple[int, int], num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window = tuple(window)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.attn_drop = nn.Dropout(attn_drop)
        self.lepe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.softmax = nn.Softmax(dim=-1)

    def needs_map(self) -> bool:
        """True when this forward must compute the attention map explicitly (see the class docstring)."""
        return (
            not self.fused_attn
            or _FORCE_EXPLICIT > 0
            or (self.training and self.attn_drop.p > 0.0)
            or _has_hooks(self.softmax)
            or _has_hooks(self.attn_drop)
            or _global_hooks()
        )

    def _heads(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B*nW, h, N, d)``."""
        x = window_partition(x, *self.window)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, qkv: Tensor, mask: Tensor | None = None) -> Tensor:
        """``qkv: (3, B, H, W, C)``, ``mask: (nW, N, N) | None`` -> ``(B, H, W, C)``."""
        if self.needs_map():
            return self._explicit(qkv, mask)
        return self._fused(qkv, mask)

    def _explicit(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        _, B, H, W, C = qkv.shape
        wh, ww = self.window
        q = self._heads(qkv[0]) * self.scale  # (B*nW, h, N, d)
        k = self._heads(qkv[1])
        v_win = window_partition(qkv[2], wh, ww)  # (B*nW, N, C)
        v = v_win.view(v_win.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)
        lepe = self.lepe(v_win.transpose(1, 2).reshape(-1, C, wh, ww))  # (B*nW, C, wh, ww)
        lepe = lepe.reshape(-1, self.num_heads, self.head_dim, wh * ww).transpose(2, 3)

        attn = q @ k.transpose(-2, -1)  # (B*nW, h, N, N)
        if mask is not None:
            nW, N = mask.shape[0], mask.shape[1]
            attn = attn.view(B, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v + lepe).transpose(1, 2).reshape(-1, wh * ww, C)  # (B*nW, N, C)
        return window_reverse(x, wh, ww, H, W)

    def attend_windows(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """The fused path on window-major tokens: ``qkv: (B, L, 3C)`` -> ``(B, L, C)``, both window-major.

        ``qkv``'s tokens are in :func:`window_tokens` order (``L = nW * N``) and each token's ``3C``
        channels are ``(q, k, v) x (h, d)``; ``mask``: ``(B*nW, 1, N, N)`` additive (0 allowed, -inf not) or None.
        On the CPU the compiled kernel (:func:`use_cpu_kernel`) attends ``qkv`` as it lies, ``(B*nW, N, 3, h, d)``,
        and writes ``(B*nW, N, h, d)``; otherwise q, k and v go to ``F.scaled_dot_product_attention`` as
        strided views ``(B*nW, h, N, d)`` (no copy: torch's CPU flash kernel reads them in place and writes
        its output token-major, so the output comes back to ``(B, L, C)`` as a view), with ``scale=``.
        Neither stores the ``(N, N)`` maps.
        The head dimension is zero-padded to what the kernels want (:func:`sdpa_head_dim`, CUDA; exact:
        zeros add nothing to ``q . k`` and the padded output columns are dropped). On the CPU, bfloat16
        inputs (autocast) are attended in float32: torch's CPU flash kernel is 2-3x slower in bf16.
        LePE is a depthwise conv of V per window, added to the output.
        """
        B, L, C3 = qkv.shape
        C, (wh, ww), h, d = C3 // 3, self.window, self.num_heads, self.head_dim
        N = wh * ww
        t = qkv.view(-1, N, 3, h, d)  # (B*nW, N, 3, h, d)
        v_img = t[:, :, 2].reshape(-1, N, C).transpose(1, 2).reshape(-1, C, wh, ww)  # channels-last windows
        lepe = self.lepe(v_img).flatten(2).transpose(1, 2)  # (B*nW, N, C)
        if use_cpu_kernel(qkv, mask, N, d):
            t32 = t.float() if t.dtype != torch.float32 else t  # bf16 autocast: attended in float32, as below
            m = mask.reshape(-1, N, N) if mask is not None else None
            o = window_attention(t32, m, self.scale).view(-1, N, C).to(qkv.dtype) + lepe  # (B*nW, N, C)
            return o.view(B, L, C)
        q, k, v = (u.transpose(1, 2) for u in t.unbind(2))  # (B*nW, h, N, d) views
        d_pad = sdpa_head_dim(d, qkv.device)
        cpu_bf16 = qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16
        if cpu_bf16:
            q, k, v = q.float(), k.float(), v.float()
        if d_pad != d:  # zero columns: q . k and the first d output columns are unchanged
            q, k, v = (F.pad(u, (0, d_pad - d)) for u in (q, k, v))
        with torch.autocast("cpu", enabled=False) if cpu_bf16 else contextlib.nullcontext():
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B*nW, h, N, d')
        o = o[..., :d].transpose(1, 2).reshape(-1, N, C).to(qkv.dtype) + lepe
        return o.view(B, L, C)

    def _fused(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """:meth:`attend_windows` for this module's own call ``qkv: (3, B, H, W, C)``, ``mask: (nW, N, N)``.

        The block calls :meth:`attend_windows` directly on tokens it has put in window order (one
        gather); this entry point serves a block in which only some attention modules take the
        fused path (e.g. a hook on the other one's ``softmax``).
        """
        _, B, H, W, C = qkv.shape
        perm, inv = window_tokens(H, W, self.window, None, str(qkv.device))  # the caller has rolled
        tokens = qkv.permute(1, 2, 3, 0, 4).reshape(B, H * W, 3 * C)
        allowed = None
        if mask is not None:  # -100 -> -inf (see _batch_mask)
            allowed = torch.zeros_like(mask).masked_fill_(mask.ne(0), float("-inf"))
            allowed = allowed.unsqueeze(0).expand(B, *mask.shape).reshape(-1, 1, *mask.shape[1:])
        out = self.attend_windows(gather_tokens(tokens, perm, inv), allowed)
        return gather_tokens(out, inv, perm).view(B, H, W, C)


class DropPath(nn.Module):
    """Stochastic depth per sample (active in training mode only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def _mask(self, x: Tensor) -> Tensor:
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        return x * self._mask(x)  # one pass over x (x * mask / keep takes two)

    def add_to(self, shortcut: Tensor, x: Tensor) -> Tensor:
        """``shortcut + self(x)``, in one pass over the maps when samples are dropped (``addcmul``), unless
        something hooks this module (then it is called); the same random draws as calling it."""
        if self.drop_prob == 0.0 or not self.training or _has_hooks(self) or _global_hooks():
            return shortcut + self(x)
        return torch.addcmul(shortcut, x, self._mask(x))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Mlp(nn.Module):
    """``fc1 -> GELU -> depthwise 5x5 conv -> GELU -> fc2`` on ``(B, H, W, C)`` maps."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 5, 1, 2, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``.

        When gradients flow on the CPU in float32, everything between ``fc1``'s product and ``fc2`` (its
        bias, GELU, the depthwise convolution, GELU) is one compiled kernel forward and backward
        (:mod:`cka_lab.models.cpu_mlp`), unless something hooks ``fc1``, ``act`` or ``dwconv`` (then the
        modules are called, as in the official code), autocast is on or ``torch.compile`` traces it.
        Without gradients (evaluation, analysis) the modules are called.
        """
        if self._fused_route(x):
            return self.fc2(gelu_dwconv_gelu(F.linear(x, self.fc1.weight), self.fc1.bias, self.dwconv.weight,
                                             self.dwconv.bias))
        x = self.act(self.fc1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))

    def _fused_route(self, x: Tensor) -> bool:
        """True when :func:`~cka_lab.models.cpu_mlp.gelu_dwconv_gelu` computes this forward (see :meth:`forward`)."""
        return (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
                and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)
                and not any(_has_hooks(m) for m in (self.fc1, self.act, self.dwconv)) and not _global_hooks()
                and mlp_kernel_supports(self.fc1, self.act, self.dwconv, x))


class CSwinTransformerBlock(nn.Module):
    """Cross-shaped window block: half the channels attend in horizontal strips, half in vertical ones.

    ``x: (B, L, C)`` tokens of an ``H x W`` map -> ``(B, L, C)``. Odd blocks shift their windows by half
    a window (``shift=True``) and mask attention across the wrapped-around borders; the masks for the
    training patch size are stored as the buffers ``attn_mask_h`` / ``attn_mask_v`` (as in the official
    state dict), masks for other sizes are computed on demand.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        shift: bool,
        mlp_ratio: float,
        drop_path: float,
        image_size: int,
    ):
        super().__init__()
        wh, ww = window_size
        self.dim = dim
        self.windows = ((wh, ww), (ww, wh))  # horizontal strip, vertical strip
        self.shifts = ((wh // 2, ww // 2), (ww // 2, wh // 2)) if shift else None
        self.image_size = image_size
        if shift:
            for name, win, sh in zip(("attn_mask_h", "attn_mask_v"), self.windows, self.shifts):
                self.register_buffer(name, _cached_mask(image_size, image_size, win, sh, "cpu").clone())
        self.norm1 = nn.LayerNorm(dim)
        # Identity tap: its output is the block's state after the attention residual, ``(B, L, C)``
        # (the EDT authors' CKA layer for attention). No parameters: the state dict is unchanged.
        self.attn_residual = nn.Identity()
        self.attns = nn.ModuleList([WindowAttention(dim // 2, w, num_heads) for w in self.windows])
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def _masks(self, H: int, W: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if H == W == self.image_size:
            return self.attn_mask_h, self.attn_mask_v
        return tuple(_cached_mask(H, W, w, s, str(device)) for w, s in zip(self.windows, self.shifts))

    def window_major(self) -> bool:
        """True when the attention of this block runs on window-major tokens (:meth:`_attend_window_major`).

        That is whenever neither attention module needs its maps and nothing hooks the modules the
        window-major route does not call (``attns.k``, ``qkv``); otherwise each attention module is
        called on its half of ``qkv`` in image layout, as in the official code.
        """
        return not any(a.needs_map() or _has_hooks(a) for a in self.attns) and not _has_hooks(self.qkv)

    def _kernel_route(self, xn: Tensor) -> bool:
        """True when :meth:`_attend_by_kernel` serves this forward: :func:`use_cpu_kernel` holds for both
        directions and nothing hooks the LePE convolutions (which the kernel computes itself)."""
        return all(
            use_cpu_kernel(xn, None, a.window[0] * a.window[1], a.head_dim) and not _has_hooks(a.lepe)
            for a in self.attns
        )

    def _attend_by_kernel(self, xn: Tensor, H: int, W: int) -> Tensor:
        """:meth:`_attend_window_major` by the compiled CPU kernel: ``(B, L, C) -> (B, L, C)``.

        One ``qkv`` product of the token-major ``xn`` without its bias (output columns regrouped by
        direction); the kernel reads each direction's q, k and v through the rows of its (shifted) windows,
        adds the bias, attends (in float32), adds LePE and writes the direction's half of the output
        token-major (:func:`~cka_lab.models.cpu_attention.attend_token_windows`): the same products as the
        official route without the gathers, the LePE convolution module and the concatenation.
        """
        B, L, C = xn.shape
        half, dev = C // 2, str(xn.device)
        # the projection's output columns regrouped (direction, q/k/v, C/2), so that each direction reads one
        # contiguous span of every row (the weight's rows are (q/k/v, direction, C/2))
        w = self.qkv.weight.view(3, 2, half, C).transpose(0, 1).reshape(3 * C, C)
        b = self.qkv.bias.view(3, 2, half).transpose(0, 1).reshape(3 * C)
        qkv = F.linear(xn, w).reshape(B * L, 3 * C).float()
        groups, lepe = [], []
        for j, attn in enumerate(self.attns):
            shift = self.shifts[j] if self.shifts is not None else None
            perm, inv = window_tokens(H, W, attn.window, shift, dev)
            mask, mask_t = _kernel_mask(H, W, attn.window, shift, dev) if shift is not None else (None, None)
            groups.append(WindowGroup(
                _flat_tokens(perm, inv, B)[0], attn.window, attn.num_heads, attn.head_dim,
                3 * j * half, (3 * j + 1) * half, (3 * j + 2) * half, j * half, attn.scale, mask, mask_t,
            ))
            lepe.append((attn.lepe.weight.float(), attn.lepe.bias.float()))
        return attend_token_windows(qkv, b.float(), groups, lepe, C).view(B, L, C).to(xn.dtype)

    def _attend_window_major(self, xn: Tensor, H: int, W: int) -> Tensor:
        """``xn: (B, L, C)`` normalised tokens -> ``(B, L, C)`` attention output (before ``proj``).

        Per direction, one gather puts the (rolled) tokens in window order, the direction's rows of
        ``qkv`` project them there, :meth:`WindowAttention.attend_windows` attends, and one gather puts
        the result back in image order: the same products as the official route with two token
        gathers in place of its rolls, partitions, layout copies and their backward.
        """
        if self._kernel_route(xn):
            return self._attend_by_kernel(xn, H, W)
        B, L, C = xn.shape
        w = self.qkv.weight.view(3, 2, C // 2, C)  # (q/k/v, direction, C/2, C)
        b = self.qkv.bias.view(3, 2, C // 2)
        dev = str(xn.device)
        out = []
        for j, attn in enumerate(self.attns):
            shift = self.shifts[j] if self.shifts is not None else None
            perm, inv = window_tokens(H, W, attn.window, shift, dev)
            qkv = F.linear(gather_tokens(xn, perm, inv), w[:, j].reshape(-1, C), b[:, j].reshape(-1))
            mask = _batch_mask(H, W, attn.window, shift, B, dev) if shift is not None else None
            out.append(gather_tokens(attn.attend_windows(qkv, mask), inv, perm))
        return torch.cat(out, dim=-1)

    def attend(self, xn: Tensor, H: int, W: int) -> Tensor:
        """``xn: (B, L, C)`` normalised tokens of ``H x W`` maps -> ``(B, L, C)`` the two directions' attention
        output with LePE, before ``proj``: by :meth:`_attend_window_major` when :meth:`window_major` holds,
        else each attention module on its half of ``qkv`` in image layout, as in the official code."""
        if self.window_major():
            return self._attend_window_major(xn, H, W)
        B, L, C = xn.shape
        qkv = self.qkv(xn).view(B, H, W, 3, C).permute(3, 0, 1, 2, 4)  # (3, B, H, W, C)
        halves = (qkv[..., : C // 2], qkv[..., C // 2 :])
        if self.shifts is None:
            out = [attn(h) for attn, h in zip(self.attns, halves)]
        else:
            masks = self._masks(H, W, xn.device)
            out = []
            for attn, h, (sh, sw), mask in zip(self.attns, halves, self.shifts, masks):
                y = attn(torch.roll(h, shifts=(-sh, -sw), dims=(2, 3)), mask)
                out.append(torch.roll(y, shifts=(sh, sw), dims=(1, 2)))
        return torch.cat(out, dim=-1).view(B, L, C)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        H, W = x_size
        B, L, C = x.shape
        shortcut = x
        x = self.proj_drop(self.proj(self.attend(self.norm1(x), H, W)))
        x = self.attn_residual(self._add_dropped(shortcut, x))
        return self._add_dropped(x, self.mlp(self.norm2(x).view(B, H, W, C)).view(B, L, C))

    def _add_dropped(self, shortcut: Tensor, x: Tensor) -> Tensor:
        """``shortcut + drop_path(x)`` (one pass when samples are dropped: :meth:`DropPath.add_to`)."""
        if isinstance(self.drop_path, DropPath):
            return self.drop_path.add_to(shortcut, x)
        return shortcut + self.drop_path(x)


class BasicLayer(nn.Module):
    """A stage of ``depth`` blocks alternating plain and shifted windows: (B, L, C) -> (B, L, C)."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, drop_path: list[float], image_size):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                CSwinTransformerBlock(dim, num_heads, window_size, i % 2 == 1, mlp_ratio, drop_path[i], image_size)
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class RSTB(nn.Module):
    """Residual transformer stage: ``residual_group(x) + x`` on (B, L, C) tokens."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, drop_path, image_size):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio, drop_path, image_size)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        return self.residual_group(x, x_size) + x


class PatchEmbed(nn.Module):
    """``(B, C, H, W) -> (B, H*W, C)`` tokens (row-major), then LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class PatchUnEmbed(nn.Module):
    """``(B, H*W, C) -> (B, C, H, W)``."""

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        B, L, C = x.shape
        return x.transpose(1, 2).reshape(B, C, x_size[0], x_size[1])


class SwinBody(nn.Module):
    """The shared transformer body: ``(B, C, H, W) -> (B, C, H, W)``, with a global residual.

    H and W must be multiples of both window sides (24 for the official 6x24 windows).
    """

    def __init__(self, cfg: EDTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = cfg.window_size
        self.patch_embed = PatchEmbed(dim)
        self.patch_unembed = PatchUnEmbed()
        self.pos_drop = nn.Dropout(0.0)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            start = sum(cfg.depths[:i])
            self.layers.append(
                RSTB(dim, depth, heads, cfg.window_size, cfg.mlp_ratio, dpr[start : start + depth], cfg.image_size)
            )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        m = math.lcm(*self.window_size)
        if H % m or W % m:
            raise CkaLabError(
                f"EDT body input {H}x{W} is not a multiple of {m}: pad the image first (EDT.restore does this)"
            )
        t = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            t = layer(t, (H, W))
        t = self.patch_unembed(self.norm(t), (H, W))
        return self.conv_after_body(t) + x


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def _make_head(cfg: EDTConfig, head: TaskHead) -> nn.ModuleList:
    nf = cfg.num_feat
    down = head.kind != "sr" and not cfg.sf
    mods: list[nn.Module] = [nn.Conv2d(cfg.in_channels, nf, 3, 1, 1)]
    for i in range(cfg.depth):
        mods.append(ResBlockDown(nf * 2**i, nf * 2 ** (i + 1), down=down))
    mods.append(nn.Conv2d(nf * 2**cfg.depth, cfg.embed_dim, 3, 1, 1))
    return nn.ModuleList(mods)


def _make_tail(cfg: EDTConfig, head: TaskHead) -> nn.ModuleList:
    nf = cfg.num_feat
    chans = [cfg.embed_dim] + [nf * 2**i for i in range(cfg.depth, 0, -1)]  # e.g. 60, 32, 16
    up = head.kind != "sr" and not cfg.sf
    block = UpResBlock if up else ResBlockSkip
    mods: list[nn.Module] = [block(chans[i], chans[i + 1]) for i in range(cfg.depth)]
    if head.kind == "sr":
        if cfg.upsampler == "pixelshuffledirect":
            mods += [UpsampleOneStep(head.out_scale, chans[-1], cfg.in_channels), nn.Identity()]
        elif cfg.upsampler == "pixelshuffle":
            mods += [Upsample(head.out_scale, chans[-1]), nn.Conv2d(chans[-1], cfg.in_channels, 3, 1, 1)]
        else:
            raise CkaLabError(f"unknown upsampler {cfg.upsampler!r}: use pixelshuffle or pixelshuffledirect")
    else:
        mods.append(nn.Conv2d(chans[-1], cfg.in_channels, 3, 1, 1))
    return nn.ModuleList(mods)


class EDT(nn.Module):
    """EDT with one head/tail pair per task around a shared transformer body.

    Weights are initialised by :func:`cka_lab.models.init.init_edt_weights` (Swin-style, the same on
    every torch version for the same ``torch.manual_seed``).

    ``forward(inputs)`` takes one ``(B, 3, H, W)`` tensor per head, in the official head order
    (``self.tasks``: SR scales, then noise levels, then rain levels) and returns one output per head.
    Inputs are in [0, 1]; each head's input must be padded to a multiple of
    ``config.pad_multiple(task)`` (use :meth:`restore` for images of any size).
    """

    def __init__(self, cfg: EDTConfig):
        super().__init__()
        if not cfg.heads:
            raise CkaLabError("an EDT needs at least one task head (SR scale, noise level or rain level)")
        self.config = cfg
        # the stored shifted-window masks of the training size are the one allocation that grows with the
        # square of image_size: refuse (one line) a size whose masks the machine cannot hold, before any
        check_fits(stored_mask_bytes(cfg), available_memory("cpu"), f"the attention masks of image_size {cfg.image_size}",
                   "use a smaller image_size (masks for other input sizes are built when an input of that size comes)")
        gen = stable_generator()  # before any submodule draws: PyTorch's own init never reaches the weights
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        for h in cfg.heads:
            self.add_module(f"head_{h.suffix}", _make_head(cfg, h))
        self.body = SwinBody(cfg)
        for h in cfg.heads:
            self.add_module(f"tail_{h.suffix}", _make_tail(cfg, h))
        self.criterion = nn.L1Loss()
        init_edt_weights(self, gen)

    # -- properties --------------------------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        return self.config.tasks

    @property
    def name(self) -> str:
        return self.config.name

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_fused_attn(self, enable: bool) -> "EDT":
        """Use fused attention (SDPA) in every window-attention module, or explicit maps everywhere.

        Explicit maps are still taken where :meth:`WindowAttention.needs_map` requires them (hooks).
        """
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.fused_attn = bool(enable)
        return self

    # -- pieces ------------------------------------------------------------------------------------
    def encode(self, x: Tensor, task: str) -> tuple[Tensor, list[Tensor]]:
        """Head of ``task``: normalised ``(B, 3, H, W)`` -> body input ``(B, C, H', W')`` and skips."""
        head = getattr(self, f"head_{self.config.head(task).suffix}")
        x = head[0](x)
        skips = []
        for blk in head[1:-1]:
            if blk.down:
                x, skip = blk(x)
            else:
                x = skip = blk(x)
            skips.append(skip)
        return head[-1](x), skips

    def decode(self, feats: Tensor, skips: list[Tensor], x_norm: Tensor, task: str) -> Tensor:
        """Tail of ``task``: body output -> normalised restored image (before the mean is added back)."""
        h = self.config.head(task)
        tail = getattr(self, f"tail_{h.suffix}")
        x = feats
        for blk, skip in zip(tail[: self.config.depth], reversed(skips)):
            x = blk(x, skip)
        if h.kind == "sr":
            x = tail[-1](tail[-2](x))
            return x + F.interpolate(x_norm, scale_factor=h.out_scale, mode="bilinear", align_corners=False)
        return tail[-1](x) + x_norm

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) * self.config.image_range

    def _denormalise(self, x: Tensor) -> Tensor:
        return x / self.config.image_range + self.mean

    def forward_task(self, x: Tensor, task: str) -> Tensor:
        """One head: padded ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``."""
        self._check_input(x, task)
        x_norm = self._normalise(x)
        feats, skips = self.encode(x_norm, task)
        return self._denormalise(self.decode(self.body(feats), skips, x_norm, task))

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        """One input per head in ``self.tasks`` order -> one output per head.

        In eval mode every head runs the body on its own (as the official forward does). In training
        mode heads whose body inputs share a shape go through the body as one batch, as the official
        multi-task training forward does.
        """
        if isinstance(inputs, Tensor):
            inputs = [inputs]
        if len(inputs) != len(self.tasks):
            raise CkaLabError(
                f"{self.name} takes {len(self.tasks)} inputs, one per head ({', '.join(self.tasks)}), "
                f"got {len(inputs)}; use restore(x, task) or forward_task(x, task) for a single head"
            )
        if not self.training:
            return [self.forward_task(x, t) for x, t in zip(inputs, self.tasks)]
        for x, t in zip(inputs, self.tasks):
            self._check_input(x, t)
        norms = [self._normalise(x) for x in inputs]
        encoded = [self.encode(xn, t) for xn, t in zip(norms, self.tasks)]
        feats = [f for f, _ in encoded]
        if len({f.shape[1:] for f in feats}) == 1:
            bodies = self.body(torch.cat(feats, 0)).split([f.shape[0] for f in feats], 0)
        else:
            bodies = [self.body(f) for f in feats]
        return [
            self._denormalise(self.decode(b, skips, xn, t))
            for b, (_, skips), xn, t in zip(bodies, encoded, norms, self.tasks)
        ]

    def _check_input(self, x: Tensor, task: str) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise CkaLabError(
                f"EDT input must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}: "
                f"convert the image to {self.config.in_channels} channels"
            )
        m = self.config.pad_multiple(task)
        if x.shape[-2] % m or x.shape[-1] % m:
            raise CkaLabError(
                f"input {x.shape[-2]}x{x.shape[-1]} for task {task} is not a multiple of {m}: "
                "use EDT.restore(x, task), which pads and crops back"
            )

    @torch.no_grad()
    def restore(self, x: Tensor, task: str) -> Tensor:
        """Restore images of any size >= 1x1 with the official mirror padding and crop-back.

        ``x: (3, H, W) | (B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)`` (``s`` the SR scale, else 1).
        """
        if x.ndim == 3:
            x = x.unsqueeze(0)
        head = self.config.head(task)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise CkaLabError(
                f"restore expects a (3, H, W) or (B, 3, H, W) image, got {tuple(x.shape)}: "
                "convert gray or RGBA images to RGB first"
            )
        h, w = x.shape[-2:]
        if h < 1 or w < 1:
            raise CkaLabError(f"image of size {h}x{w} is empty: nothing to restore")
        padded = mirror_pad(x, self.config.pad_multiple(task))
        out = self.forward_task(padded, task)
        s = head.out_scale
        return out[..., : h * s, : w * s]


def mirror_pad(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to the next multiple, strictly larger: ``(h // m + 1) * m`` (official rule).

    Mirrors with the edge pixel repeated (numpy ``symmetric``), as the official test script does by
    concatenating the flipped image; images smaller than the pad are mirrored repeatedly.
    ``(B, C, h, w) -> (B, C, H, W)``.
    """
    h, w = x.shape[-2:]
    H = (h // multiple + 1) * multiple
    W = (w // multiple + 1) * multiple
    while x.shape[-2] < H:
        x = torch.cat([x, torch.flip(x, dims=[-2])], dim=-2)
    x = x[..., :H, :]
    while x.shape[-1] < W:
        x = torch.cat([x, torch.flip(x, dims=[-1])], dim=-1)
    return x[..., :W]


def create_edt(name: str, **overrides) -> EDT:
    """Build the EDT of an official architecture name, e.g. ``create_edt("SRx2x3x4_EDTT")``.

    Keyword overrides replace fields of the :class:`EDTConfig` (e.g. ``drop_path_rate=0.0``).
    """
    return EDT(config_from_name(name, **overrides))
