"""EDT's MLP middle on the CPU by a compiled kernel: ``GELU(dwconv(GELU(h + b1)) + b2)``, forward and backward.

Between ``fc1`` and ``fc2``, EDT's MLP runs GELU, a depthwise 5x5 convolution and GELU again over 2x the
channels of the block. In torch these are five passes over the map forward (the bias copy of ``fc1``'s
``addmm``, GELU, the convolution, GELU, and their layout copies) and more backward, where oneDNN's depthwise
backward alone took about 5x its forward. ``kernels/mlp_middle.cpp`` does the whole middle in one pass
over each image forward and one backward, a row at a time over all channels (vectorised over 16), the
rows in flight kept in small rings; the convolution's output is recomputed in the backward rather than
stored. The images are split between threads; each image's share of the weight and bias gradients is
kept apart and the shares are added in float64 in image order, so no result depends on the thread count. GELU is the exact (erf) one, with torch's own
erf formula (Abramowitz & Stegun 7.1.26), so results equal torch's modules to float32 rounding.
How it is built: :mod:`cka_lab.models.cpu_kernels`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cka_lab.models.cpu_kernels import kernel_library, pointer, run_split, split_count

__all__ = ["KERNEL_SIZES", "gelu_dwconv_gelu", "mlp_kernel_supports"]

KERNEL_SIZES = (1, 3, 5, 7)


def mlp_kernel_supports(fc1: nn.Linear, act: nn.Module, conv: nn.Conv2d, x: Tensor) -> bool:
    """True when :func:`gelu_dwconv_gelu` can stand in for ``act(conv(act(fc1(x))))`` (channels-last, ``x:
    (..., in)``): float32 on the CPU, ``fc1`` and ``conv`` with biases, ``act`` the exact GELU, ``conv`` a
    depthwise, stride-1, "same"-padded square convolution (1, 3, 5 or 7) of zeros padding, and the kernel built."""
    k = conv.kernel_size[0]
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and fc1.weight.dtype == conv.weight.dtype == torch.float32
        and x.dim() == 4
        and fc1.bias is not None
        and conv.bias is not None
        and isinstance(act, nn.GELU)
        and act.approximate == "none"
        and fc1.out_features == conv.in_channels == conv.out_channels == conv.groups
        and conv.kernel_size == (k, k)
        and k in KERNEL_SIZES
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
        and kernel_library() is not None
    )


class _GeluDwconvGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, b1: Tensor, weight: Tensor, b2: Tensor) -> Tensor:
        B, H, W, C = h.shape
        k = weight.shape[-1]
        w = weight.detach().reshape(C, k * k).contiguous()
        out = torch.empty_like(h)
        lib = kernel_library()
        pieces = split_count(B)
        work = h.new_empty(pieces, lib.cka_gcg_work(W, C, k))
        ptrs = (pointer(h), pointer(b1), pointer(w), pointer(b2), pointer(out))
        run_split(lib.cka_gcg_forward, B, lambda p: (*ptrs, pointer(work[p])), (H, W, C, k), pieces=pieces)
        ctx.save_for_backward(h, b1, w, b2)
        ctx.weight_shape = weight.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        h, b1, w, b2 = ctx.saved_tensors
        B, H, W, C = h.shape
        k = ctx.weight_shape[-1]
        grad = grad.contiguous()
        dh = torch.empty_like(h)
        pieces = split_count(B)
        # per image: its share of the weight and bias gradients, added below in float64 and image order
        dw, db1, db2 = h.new_empty(B, C, k, k), h.new_empty(B, C), h.new_empty(B, C)
        lib = kernel_library()
        work = h.new_empty(pieces, lib.cka_gcg_work(W, C, k))
        ptrs = (pointer(h), pointer(b1), pointer(w), pointer(b2), pointer(grad), pointer(dh), pointer(dw),
                pointer(db1), pointer(db2))
        run_split(lib.cka_gcg_backward, B, lambda p: (*ptrs, pointer(work[p])), (H, W, C, k), pieces=pieces)

        def total(t: Tensor) -> Tensor:
            return t.sum(0, dtype=torch.float64).to(h.dtype)

        return dh, total(db1), total(dw).view(ctx.weight_shape), total(db2)


def gelu_dwconv_gelu(h: Tensor, b1: Tensor, weight: Tensor, b2: Tensor) -> Tensor:
    """``(B, H, W, C) -> (B, H, W, C)``: ``GELU(dwconv(GELU(h + b1)) + b2)``, differentiable in every input.

    EDT's MLP between ``fc1`` and ``fc2``: ``h`` is ``fc1``'s output without its bias ``b1``; ``weight: (C, 1,
    k, k)`` and ``b2: (C,)`` are the depthwise convolution's (zero padding ``k // 2``, ``k`` in 1, 3, 5, 7); GELU
    is the exact one. All float32 on the CPU; check :func:`mlp_kernel_supports` first.
    """
    if h.device.type != "cpu" or h.dtype != torch.float32 or h.dim() != 4:
        raise ValueError(f"gelu_dwconv_gelu wants h (B, H, W, C) float32 on the CPU, got {tuple(h.shape)} {h.dtype} on {h.device}")
    C = h.shape[-1]
    k = weight.shape[-1]
    if tuple(weight.shape) != (C, 1, k, k) or k not in KERNEL_SIZES or weight.dtype != torch.float32:
        raise ValueError(f"weight must be ({C}, 1, k, k) float32 with k in {KERNEL_SIZES}, got {tuple(weight.shape)} {weight.dtype}")
    for name, t in (("b1", b1), ("b2", b2)):
        if tuple(t.shape) != (C,) or t.dtype != torch.float32:
            raise ValueError(f"{name} must be ({C},) float32, got {tuple(t.shape)} {t.dtype}")
    if kernel_library() is None:
        raise RuntimeError("the CPU kernels are not available (see cka_lab.models.cpu_kernels)")
    return _GeluDwconvGelu.apply(h.contiguous(), b1.contiguous(), weight, b2.contiguous())
