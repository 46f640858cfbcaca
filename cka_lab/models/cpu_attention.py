"""Window attention on the CPU by a compiled kernel: float32, heads of up to 16 channels.

torch's CPU flash-attention kernel runs EDT's heads (5 channels in EDT-T, 144-token windows) as tiny
GEMMs and spends most of its time outside arithmetic: in a training step of EDT-T it took about 45 % of
the time. The kernel in ``kernels/window_attention.cpp`` computes the same ``softmax(q k^T * scale +
mask) v`` and its gradient directly on the window-major ``qkv`` projection (no q/k/v copies, no stored
``(N, N)`` maps: the backward recomputes them from the saved log-sum-exp, as flash attention does),
vectorised over 16 queries (forward) or 16 keys (backward). ``benchmarks/train_speed.py --paths``
compares it with SDPA; how it is built: :mod:`cka_lab.models.cpu_kernels`.

Results equal SDPA's to float32 rounding (its exp has a relative error of about 1e-7; masked weights
are exact zeros, never denormals) and do not depend on the number of threads: the work is split by
(window, head) pairs, each computed whole by one thread.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cka_lab.models.cpu_kernels import kernel_library, pointer, run_split, split_count

__all__ = ["kernel_supports", "window_attention"]


def kernel_supports(N: int, d: int) -> bool:
    """True when the kernel is available for windows of ``N`` tokens and heads of ``d`` channels."""
    lib = kernel_library()
    return lib is not None and 1 <= N <= lib.cka_wa_max_tokens() and 1 <= d <= lib.cka_wa_max_head_dim()


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        W, N, _, h, d = qkv.shape
        out = qkv.new_empty(W, N, h, d)
        lse = qkv.new_empty(W, h, N)
        nwm = mask.shape[0] if mask is not None else 1
        lib = kernel_library()
        pieces = split_count(W * h)
        # work space per piece: the mask of one window transposed (the forward reads it query-major)
        work = qkv.new_empty(pieces, lib.cka_wa_forward_work(N)) if mask is not None else None
        ptrs = (pointer(qkv), pointer(mask), pointer(out), pointer(lse))
        run_split(lib.cka_wa_forward, W * h, lambda p: (*ptrs, pointer(work[p]) if work is not None else None),
                  (N, h, d, nwm, scale), pieces=pieces)
        ctx.save_for_backward(qkv, out, lse, mask)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        qkv, out, lse, mask = ctx.saved_tensors
        W, N, _, h, d = qkv.shape
        grad = grad.contiguous()
        dqkv = torch.empty_like(qkv)
        nwm = mask.shape[0] if mask is not None else 1
        run_split(
            kernel_library().cka_wa_backward,
            W * h,
            (pointer(qkv), pointer(mask), pointer(out), pointer(lse), pointer(grad), pointer(dqkv)),
            (N, h, d, nwm, ctx.scale),
        )
        return dqkv, None, None


def window_attention(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` per window and head by the compiled kernel, differentiable in ``qkv``.

    ``qkv``: ``(W, N, 3, h, d)`` float32 on the CPU (window-major tokens; made contiguous if it is not);
    ``mask``: ``(nWm, N, N)`` additive float32 (0 or ``-inf``; every row keeps at least one key), window ``w``
    using ``mask[w % nWm]``, or None. Returns ``(W, N, h, d)``. Check :func:`kernel_supports` first.
    """
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"window_attention wants (W, N, 3, h, d) float32 on the CPU, got {tuple(qkv.shape)} {qkv.dtype} on {qkv.device}")
    W, N, _, h, d = qkv.shape
    if not kernel_supports(N, d):
        raise RuntimeError(f"the CPU attention kernel is not available for N={N}, d={d}")
    if mask is not None:
        if mask.dim() != 3 or mask.shape[1:] != (N, N) or W % mask.shape[0]:
            raise ValueError(f"mask must be (nWm, {N}, {N}) with nWm dividing {W}, got {tuple(mask.shape)}")
        if mask.requires_grad:
            raise ValueError("the CPU attention kernel takes no gradient for the mask")
        mask = mask.detach().to(torch.float32).contiguous()
    return _WindowAttention.apply(qkv.contiguous(), mask, float(scale))
