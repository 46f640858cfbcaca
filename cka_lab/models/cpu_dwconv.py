"""A depthwise convolution on channels-last maps whose backward is a compiled CPU kernel.

The forward is torch's own (``F.conv2d`` with ``groups = C`` on the channels-last view: oneDNN), so
outputs are unchanged. The backward of oneDNN's depthwise 5x5 convolution took about 14 % of an EDT-T
training step on the CPU (about 5x its forward: the weight gradient reduces over every pixel);
``kernels/depthwise_conv.cpp`` computes the input, weight and bias gradients vectorised over 16 channels
from zero-padded planes, and the images are split between torch's threads (each thread's weight and bias
gradients are summed after). How it is built: :mod:`cka_lab.models.cpu_kernels`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cka_lab.models.cpu_kernels import kernel_library, pointer, run_split, split_count

__all__ = ["KERNEL_SIZES", "depthwise_conv", "dwconv_kernel_supports"]

KERNEL_SIZES = (1, 3, 5, 7)


def dwconv_kernel_supports(conv: nn.Conv2d, x: Tensor) -> bool:
    """True when :func:`depthwise_conv` can stand in for ``conv`` on ``x: (B, H, W, C)``: a depthwise,
    stride-1, "same"-padded square convolution of float32 maps on the CPU, and the kernel built."""
    k = conv.kernel_size[0]
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and x.dim() == 4
        and x.shape[-1] == conv.in_channels == conv.out_channels == conv.groups
        and conv.kernel_size == (k, k)
        and k in KERNEL_SIZES
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
        and kernel_library() is not None
    )


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        k = weight.shape[-1]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=x.shape[-1])
        return out.permute(0, 2, 3, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        B, H, W, C = x.shape
        k = weight.shape[-1]
        grad = grad.contiguous()
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        pieces = split_count(B)
        dw = x.new_empty(pieces, C, k, k)
        db = x.new_empty(pieces, C)
        w = weight.detach().reshape(C, k * k).contiguous()
        lib = kernel_library()
        work = x.new_empty(pieces, lib.cka_dw_backward_work(H, W, k))  # two padded planes per piece
        ptrs = (pointer(x), pointer(grad), pointer(w), pointer(dx))
        run_split(lib.cka_dw_backward, B, lambda p: (*ptrs, pointer(dw[p]), pointer(db[p]), pointer(work[p])),
                  (H, W, C, k), pieces=pieces)
        dweight = dw.sum(0).view_as(weight) if ctx.needs_input_grad[1] else None
        dbias = db.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias


def depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(B, H, W, C) -> (B, H, W, C)``: a depthwise ``k x k`` convolution (``weight: (C, 1, k, k)``, zero
    padding ``k // 2``) on channels-last maps, as ``conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)`` with
    the backward by the compiled kernel. Check :func:`dwconv_kernel_supports` first."""
    return _DepthwiseConv.apply(x.contiguous(), weight, bias)
