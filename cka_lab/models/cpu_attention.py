"""Window attention on the CPU by a compiled kernel: float32, heads of up to 16 channels, LePE folded in.

torch's CPU flash-attention kernel runs EDT's heads (5 channels in EDT-T, 144-token windows) as tiny
GEMMs and spends most of its time outside arithmetic: in a training step of EDT-T it took about 45 % of
the time. The kernel in ``kernels/window_attention.cpp`` computes the same ``softmax(q k^T * scale +
mask) v`` and its gradient, vectorised over 16 queries (forward) or 16 keys (backward), without storing
the ``(N, N)`` maps (the backward recomputes them from the saved log-sum-exp, as flash attention does).

It reads q, k and v where they lie, in the token-major output of the block's ``qkv`` projection, through a
table of rows that puts the tokens of each (shifted) window together, adds the projection's bias as it
reads, adds EDT's LePE (the depthwise 3x3 convolution of V inside each window) to the output, and writes
the output token-major too: the window partition, the roll, the LePE convolution and their backward
copies are not separate passes (:func:`attend_token_windows`). :func:`window_attention` is the plain
attention on window-major ``qkv``. ``benchmarks/train_speed.py --paths`` compares the kernel with SDPA;
how it is built: :mod:`cka_lab.models.cpu_kernels`.

Results equal torch's to float32 rounding (its exp has a relative error of 2.3e-7; masked weights are
exact zeros, never denormals). The work is split by (window, head) pairs, each computed whole by one
thread, so outputs and the gradients of ``qkv`` do not depend on the number of threads; LePE's weight
gradient is summed over per-pair partial sums in a fixed order.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cka_lab.models.cpu_kernels import kernel_library, pointer, run_split, split_count

__all__ = ["KernelShape", "WindowGroup", "attend_token_windows", "kernel_supports", "transposed_mask", "window_attention"]


class KernelShape(ctypes.Structure):
    """The geometry of one kernel call (``struct Shape`` in ``window_attention.cpp``)."""

    _fields_ = [
        ("ld", ctypes.c_int64), ("qo", ctypes.c_int64), ("ko", ctypes.c_int64), ("vo", ctypes.c_int64),
        ("ldo", ctypes.c_int64), ("oo", ctypes.c_int64),
        ("N", ctypes.c_int32), ("h", ctypes.c_int32), ("d", ctypes.c_int32), ("wh", ctypes.c_int32),
        ("ww", ctypes.c_int32), ("nwm", ctypes.c_int32), ("scale", ctypes.c_float), ("unused", ctypes.c_int32),
    ]


def kernel_supports(N: int, d: int) -> bool:
    """True when the kernel is available for windows of ``N`` tokens and heads of ``d`` channels."""
    lib = kernel_library()
    return lib is not None and 1 <= N <= lib.cka_wa_max_tokens() and 1 <= d <= lib.cka_wa_max_head_dim()


def transposed_mask(mask: Tensor) -> Tensor:
    """``(nWm, N, N) -> (nWm, N, NP)``: the mask as the kernel's forward reads it, ``[m, j, i] = mask[m, i, j]``,
    queries zero-padded to ``NP``, the next multiple of 16."""
    N = mask.shape[-1]
    return F.pad(mask.transpose(1, 2), (0, -N % 16)).contiguous()


@dataclass(frozen=True)
class WindowGroup:
    """One set of windows attended over the rows of a token-major ``qkv`` ``(M, ld)`` (one call of the kernel).

    ``rows``: ``(W*N,)`` int64, the row of token ``i`` of window ``w`` at ``w*N + i`` (tokens row-major in a
    ``window = (wh, ww)`` window); None: rows in order. Head ``hh``'s q, k and v are the columns
    ``q_col + hh*head_dim ..`` (``k_col``, ``v_col``) and its output goes to ``out_col + hh*head_dim ..``.
    ``mask``: ``(nWm, N, N)`` additive float32 (0 or ``-inf``, every row keeping a key), window ``w`` using
    ``mask[w % nWm]``, or None; ``mask_t``: :func:`transposed_mask` of it (computed when None).
    """

    rows: Tensor | None
    window: tuple[int, int]
    heads: int
    head_dim: int
    q_col: int
    k_col: int
    v_col: int
    out_col: int
    scale: float
    mask: Tensor | None = None
    mask_t: Tensor | None = None

    @property
    def tokens(self) -> int:
        return self.window[0] * self.window[1]

    def shape(self, ld: int, ldo: int) -> KernelShape:
        wh, ww = self.window
        nwm = self.mask.shape[0] if self.mask is not None else 1
        return KernelShape(ld, self.q_col, self.k_col, self.v_col, ldo, self.out_col, wh * ww, self.heads,
                           self.head_dim, wh, ww, nwm, self.scale, 0)


def _work(lib, shape: KernelShape, pieces: int, like: Tensor) -> Tensor:
    return like.new_empty(pieces, lib.cka_wa_work(ctypes.byref(shape)))


class _TokenWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, groups, out_width: int, zero_dqkv: bool, qkv: Tensor, bias: Tensor | None, *lepe: Tensor | None):
        M, ld = qkv.shape
        lib = kernel_library()
        out = qkv.new_empty(M, out_width)
        saved = []
        for gi, g in enumerate(groups):
            lw, lb = lepe[2 * gi], lepe[2 * gi + 1]
            shape = g.shape(ld, out_width)
            tasks = M // g.tokens * g.heads
            oa = qkv.new_empty(tasks, g.tokens, g.head_dim)
            lse = qkv.new_empty(tasks, g.tokens)
            pieces = split_count(tasks)
            work = _work(lib, shape, pieces, qkv)
            mask_t = g.mask_t if g.mask_t is not None or g.mask is None else transposed_mask(g.mask)
            ptrs = (ctypes.byref(shape), pointer(qkv), pointer(bias), pointer(g.rows), pointer(mask_t), pointer(lw),
                    pointer(lb), pointer(out), pointer(oa), pointer(lse))
            run_split(lib.cka_wa_forward, tasks, lambda p, ptrs=ptrs, work=work: (*ptrs, pointer(work[p])), (), pieces=pieces)
            saved += [oa, lse]
        ctx.groups, ctx.out_width, ctx.zero_dqkv = groups, out_width, zero_dqkv
        ctx.save_for_backward(qkv, bias, *lepe, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        qkv, bias, *rest = ctx.saved_tensors
        groups = ctx.groups
        lepe, saved = rest[: 2 * len(groups)], rest[2 * len(groups):]
        M, ld = qkv.shape
        grad = grad.contiguous()
        lib = kernel_library()
        dqkv = torch.zeros_like(qkv) if ctx.zero_dqkv else torch.empty_like(qkv)
        want_bias = bias is not None and ctx.needs_input_grad[4]
        dbias = torch.zeros_like(bias) if want_bias else None
        dlepe = []
        for gi, g in enumerate(groups):
            lw = lepe[2 * gi]
            oa, lse = saved[2 * gi], saved[2 * gi + 1]
            shape = g.shape(ld, ctx.out_width)
            tasks = M // g.tokens * g.heads
            pieces = split_count(tasks)
            work = _work(lib, shape, pieces, qkv)
            # per (window, head): sums over the window of LePE's gradients (0-9) and of q, k, v's (10-12)
            ds = qkv.new_zeros(tasks, g.head_dim, 13) if lw is not None or bias is not None else None
            ptrs = (ctypes.byref(shape), pointer(qkv), pointer(bias), pointer(g.rows), pointer(g.mask), pointer(lw),
                    pointer(oa), pointer(lse), pointer(grad), pointer(dqkv), pointer(ds))
            run_split(lib.cka_wa_backward, tasks, lambda p, ptrs=ptrs, work=work: (*ptrs, pointer(work[p])), (), pieces=pieces)
            # added over the windows in float64 and a fixed order -> per channel (hh, c)
            sums = ds.view(-1, g.heads * g.head_dim, 13).sum(0, dtype=torch.float64).to(qkv.dtype) if ds is not None else None
            if want_bias:
                width = g.heads * g.head_dim
                for j, col in enumerate((g.q_col, g.k_col, g.v_col)):
                    dbias[col : col + width] += sums[:, 10 + j]
            if lw is None:
                dlepe += [None, None]
            else:
                dlepe += [sums[:, :9].reshape(lw.shape), sums[:, 9].contiguous()]
        return (None, None, None, dqkv, dbias, *dlepe)


_ROWS_CHECKED: dict[tuple[int, int, int], weakref.ref] = {}  # row tables found to be permutations


def _check_rows(rows: Tensor, M: int) -> None:
    """``rows`` must hold each of ``0 .. M-1`` once (the kernel reads and writes through it unchecked). A table
    is checked once while it lives unmodified (EDT's are cached and reused every step)."""
    key = (id(rows), rows.data_ptr(), rows._version)
    ref = _ROWS_CHECKED.get(key)
    if ref is not None and ref() is rows:
        return
    if int(rows.min()) < 0 or int(rows.max()) >= M or not bool(torch.bincount(rows, minlength=M).eq(1).all()):
        raise ValueError(f"rows must hold each of the {M} rows of qkv exactly once")
    if len(_ROWS_CHECKED) > 256:
        for k in [k for k, r in _ROWS_CHECKED.items() if r() is None]:
            del _ROWS_CHECKED[k]
    _ROWS_CHECKED[key] = weakref.ref(rows)


def _check_tensor(name: str, t: Tensor | None, shape: tuple, dtype=torch.float32) -> None:
    if t is None:
        return
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)} {dtype} on the CPU, got {tuple(t.shape)} {t.dtype} on {t.device}")


def attend_token_windows(
    qkv: Tensor,
    bias: Tensor | None,
    groups: Sequence[WindowGroup],
    lepe: Sequence[tuple[Tensor, Tensor] | None],
    out_width: int,
) -> Tensor:
    """Window attention of every group over a token-major ``qkv``, LePE added, differentiable in every tensor.

    ``qkv``: ``(M, ld)`` float32 on the CPU (the projection without its bias); ``bias``: ``(ld,)``, added to
    q, k and v as they are read, or None; ``groups``: the :class:`WindowGroup` s, whose output columns tile
    ``[0, out_width)`` and whose rows each cover all ``M`` rows; ``lepe``: per group the depthwise 3x3
    convolution's ``(weight (h*d, 1, 3, 3), bias (h*d,))`` applied to V inside each window (zero padding at
    the window's borders), or None. Returns ``(M, out_width)``: for row ``rows[w*N + i]`` of group ``g``,
    ``softmax(q k^T * scale + mask) v + lepe(v)`` of token ``i`` of window ``w`` at the group's columns.
    Check :func:`kernel_supports` first. The gradient of the mask is not taken (it must not require one).
    """
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or qkv.dim() != 2:
        raise ValueError(f"attend_token_windows wants (M, ld) float32 on the CPU, got {tuple(qkv.shape)} {qkv.dtype} on {qkv.device}")
    if len(lepe) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(lepe)} LePE entries")
    M, ld = qkv.shape
    _check_tensor("bias", bias, (ld,))
    out_cols, in_cols, n_in, flat = [], set(), 0, []
    for g, lp in zip(groups, lepe):
        N, h, d = g.tokens, g.heads, g.head_dim
        if not kernel_supports(N, d):
            raise RuntimeError(f"the CPU attention kernel is not available for N={N}, d={d}")
        if M % N:
            raise ValueError(f"{M} rows are not whole windows of {N} tokens")
        if g.rows is not None:
            _check_tensor("rows", g.rows, (M,), torch.int64)
            if not g.rows.is_contiguous():
                raise ValueError("rows must be contiguous")
            _check_rows(g.rows, M)
        for name, col in (("q", g.q_col), ("k", g.k_col), ("v", g.v_col)):
            if col < 0 or col + h * d > ld:
                raise ValueError(f"{name} columns {col}..{col + h * d} outside qkv's {ld}")
            in_cols.update(range(col, col + h * d))
            n_in += h * d
        out_cols.append((g.out_col, g.out_col + h * d))
        if g.mask is not None:
            if g.mask.dim() != 3 or g.mask.shape[1:] != (N, N) or (M // N) % g.mask.shape[0]:
                raise ValueError(f"mask must be (nWm, {N}, {N}) with nWm dividing {M // N}, got {tuple(g.mask.shape)}")
            if g.mask.requires_grad or g.mask.dtype != torch.float32 or not g.mask.is_contiguous():
                raise ValueError("the mask must be contiguous float32 without gradient")
            if g.mask_t is not None:
                _check_tensor("mask_t", g.mask_t, (g.mask.shape[0], N, N + (-N % 16)))
        if lp is None:
            flat += [None, None]
        else:
            _check_tensor("LePE weight", lp[0], (h * d, 1, 3, 3))
            _check_tensor("LePE bias", lp[1], (h * d,))
            flat += [lp[0].contiguous(), lp[1].contiguous()]
    if len(in_cols) != n_in:
        raise ValueError("the groups' q, k and v columns overlap: each column of qkv may be read once")
    out_cols.sort()
    if out_cols[0][0] != 0 or out_cols[-1][1] != out_width or any(a[1] != b[0] for a, b in zip(out_cols, out_cols[1:])):
        raise ValueError(f"the groups' output columns {out_cols} must tile [0, {out_width})")
    zero_dqkv = len(in_cols) != ld
    return _TokenWindowAttention.apply(tuple(groups), out_width, zero_dqkv, qkv.contiguous(),
                                       None if bias is None else bias.contiguous(), *flat)


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
    group = WindowGroup(None, (1, N), h, d, 0, h * d, 2 * h * d, 0, float(scale), mask)
    out = attend_token_windows(qkv.reshape(W * N, 3 * h * d), None, [group], [None], h * d)
    return out.view(W, N, h, d)
