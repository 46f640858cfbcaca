"""Linear CKA, the functional core: Gram kernels, centring, HSIC estimators, constant-feature tests.

The accumulators built on it live in ``cka_minibatch`` (unbiased-minibatch) and ``cka_full``
(biased-full); ``cka_lab.metrics.cka`` re-exports everything public. The two estimators:

* ``linear_cka(x, y)`` -- the full-batch linear CKA of Kornblith et al. (2019), "Similarity of neural
  network representations revisited": with centred features ``Xc``, ``Yc`` of shape (N, D),
  ``CKA = ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)``, computed here through the centred Gram matrices
  ``H K H`` (``H = I - 11ᵀ/N``). It needs all N samples at once (N×N memory) and is biased for small N.

* ``MinibatchCKA`` (``cka_minibatch``) -- the minibatch linear CKA of Nguyen, Raghu & Kornblith (2021), "Do wide and deep
  networks learn the same things?". For every batch of n samples and every layer it forms one Gram
  matrix ``K = X Xᵀ`` (n×n), computes the unbiased HSIC_1 of Song et al. (2012) for all layer pairs,
  and sums the HSIC values over batches; CKA is the ratio of the sums,
  ``CKA_ij = Σ_b HSIC_1(K_i, L_j) / sqrt(Σ_b HSIC_1(K_i, K_i) · Σ_b HSIC_1(L_j, L_j))``.
  Memory does not depend on the number of samples: nothing N×N and no feature is kept.

HSIC_1 as an inner product
--------------------------
With the diagonal of ``K`` set to zero, the U-centred matrix (Székely & Rizzo 2014) is, for i ≠ j,
``Ũ_ij = K_ij - r_i/(n-2) - c_j/(n-2) + s/((n-1)(n-2))`` (``r``/``c``: row/column sums, ``s``: the total)
and ``Ũ_ii = 0``. Then ``HSIC_1(K, L) = <Ũ(K), Ũ(L)>_F / (n(n-3))``, which equals Song et al.'s
``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))``. Because every HSIC is an inner
product of U-centred matrices, one matrix product of the stacked, flattened U-centred Grams gives all
cross and self terms of a batch at once.

Value range (a decision, documented): the minibatch estimate is a ratio of inner products summed over
batches, so Cauchy-Schwarz bounds it to [-1, 1] exactly, and ``CKA(X, X) = 1``; nothing is clamped.
Values slightly below 0 are legitimate (an unbiased estimate of a near-zero similarity).

Constant layers are judged against their own scale (``is_constant``): a layer with
``Σ||x_i - mean||² <= CONSTANT_TOL · Σ||x_i||²`` (1e-6, float64 sums) is constant. Its cells are NaN,
with a warning naming it, in every estimator. A constant output with a bias (0.5 + rounding noise in
float32) has a small positive HSIC self term, so a test for a zero self term would let a CKA computed
from rounding noise through; the relative test does not.

Precision (measured, see ``benchmarks/cka_speed.py``): the Gram is computed in the features' dtype
(float32 for float32/half/bfloat16 features, float64 for float64), the U-centring and all sums in
float64. A float32 Gram loses accuracy only when the features share a large common component (the raw
Gram is much larger than its centred part). Each layer's ratio ``mean(diag K) / rms(Ũ)`` measures that
cancellation; above ``PRECISION_LIMIT`` the layer's Gram is recomputed from features centred over the
batch (the U-centred result is the same in exact arithmetic: U-centring cancels any shift
``K_ij + a_i + a_j``), and from then on that layer is always centred first. The subtraction is exact
wherever a value lies within a factor 2 of the mean (Sterbenz's lemma), which is where cancellation
would hurt, and it gives exact zeros for constant features; the error then stays near 1e-8 however
large the common component is. The default path costs no extra pass over the features. ReLU conv
features of the benchmark have ratios of 70..190 (CKA error ~3e-7). On EDT features
(``tests/metrics/test_cka_precision_edt.py``: the bundled EDT-T SR x2, 12 transformer blocks, 32 probe
crops of 48 px, float32 features against the same features in float64): unbiased-minibatch max |dCKA|
1.4e-8 on block updates and 5.2e-8 on block outputs; biased-full with a float32 Gram 1.4e-8 and 5.7e-10.

Speed: the Grams are nearly all the work (``benchmarks/cka_speed.py``: 2·B²·D FLOPs per layer and
batch, 0.27x the FLOPs of the benchmark's forward passes). ``x_xt`` sends float32 CPU products to
oneDNN's inner-product kernel, which runs near the CPU's FMA peak where MKL's (PyTorch's default for
``x @ x.T``) runs at half of it on AMD processors; CUDA and float64 products use ``x @ x.T``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError

__all__ = [
    "CONSTANT_TOL",
    "MIN_BATCH",
    "as_matrix",
    "centred_gram",
    "double_centre",
    "full_centred_gram",
    "gram",
    "gram_dtype_for",
    "is_constant",
    "linear_cka",
    "squared_norm",
    "u_centre",
    "u_centred_grams_and_spread",
    "unbiased_hsic",
    "x_xt",
]

MIN_BATCH = 4
"""The unbiased HSIC_1 divides by n(n-3): a batch needs at least 4 samples."""

CONSTANT_TOL = 1e-6
"""A layer whose centred features have ``Σ||x_i - mean||² <= CONSTANT_TOL · Σ||x_i||²`` is constant (see ``is_constant``)."""

PRECISION_LIMIT = {torch.float32: 250.0, torch.float64: 1e9}
"""Largest ``mean(diag K) / rms(Ũ)`` for which a raw Gram of that dtype is trusted (see module doc).

Measured for float32 (``benchmarks/cka_speed.py``, and ``tests/metrics/test_cka.py``): the CKA error of a
raw float32 Gram grows about linearly with this ratio, ~2e-9 per unit on ReLU conv features, so 250
keeps it below ~5e-7; the float64 limit is scaled by the ratio of the two machine epsilons."""


# --------------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------------


def as_matrix(x: Tensor) -> Tensor:
    """(B, ...) -> (B, D): flatten every dimension after the first (a view when possible)."""
    if x.dim() == 0:
        raise CkaLabError("features must have a batch dimension, got a scalar tensor")
    return x.reshape(x.shape[0], -1)


def gram_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Gram is computed in for features of ``dtype``: float64 stays, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _onednn_candidate() -> object:
    """PyTorch's private ``mkldnn::_linear_pointwise`` (X, W, bias, attr, scalars, algorithm) -> X Wᵀ."""
    return torch.ops.mkldnn._linear_pointwise


@functools.cache
def _onednn_linear() -> object | None:
    """oneDNN's float32 inner-product kernel ``(X, W) -> X Wᵀ``, or None where it is missing or wrong.

    On x86 CPUs PyTorch sends a float32 ``x @ x.T`` to MKL, whose kernels run 2-2.5x slower than
    oneDNN's on AMD processors (measured on a 2-core AMD EPYC: 150 vs 355 GFLOP/s for the (128, 16384)
    Grams of ``benchmarks/cka_speed.py``), while both compute in float32 with float32 accumulation
    (max error against float64, relative to the mean diagonal: 4.9e-7 MKL, 7.4e-7 oneDNN). The
    kernel is private to PyTorch, so it is used only after it has reproduced a float64 product on a
    small matrix, once per process; otherwise ``x @ x.T`` is used.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        candidate = _onednn_candidate()
        probe = torch.linspace(-1.5, 2.0, 7 * 37, dtype=torch.float32).reshape(7, 37).sin()
        with torch.no_grad():
            got = candidate(probe, probe, None, "none", [], "")
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):  # no such op, or another signature
        return None
    want = probe.double() @ probe.double().T
    right = (
        isinstance(got, Tensor)
        and got.shape == want.shape
        and got.dtype == torch.float32
        and torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    )
    return candidate if right else None


def x_xt(x: Tensor) -> Tensor:
    """``X Xᵀ`` of a (B, D) matrix in its own dtype, by the fastest exact kernel for it.

    float32 on the CPU without autograd: oneDNN's inner product (see ``_onednn_linear``); everything
    else (float64, CUDA, tensors that need gradients): ``x @ x.T``.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled()):
        op = _onednn_linear()
        if op is not None:
            x = x.contiguous()
            return op(x, x, None, "none", [], "")
    return x @ x.T


def gram(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Linear kernel ``K = X Xᵀ``.

    Args:
        x: features (B, ...), flattened to (B, D).
        dtype: the dtype of the product; by default ``gram_dtype_for(x.dtype)``.

    Returns:
        K: (B, B) in ``dtype``, on ``x``'s device.
    """
    x = as_matrix(x)
    dtype = dtype or gram_dtype_for(x.dtype)
    if x.dtype != dtype:
        x = x.to(dtype)
    return x_xt(x)


def _u_centre_zero_diag_(k: Tensor) -> Tensor:
    """In place: (..., n, n) float64 with a zero diagonal -> its U-centred matrix (zero diagonal)."""
    n = k.shape[-1]
    rows = k.sum(-1)  # (..., n)
    cols = k.sum(-2)  # (..., n)
    total = rows.sum(-1)  # (...)
    k -= (rows / (n - 2)).unsqueeze(-1)
    k -= (cols / (n - 2)).unsqueeze(-2)
    k += (total / ((n - 1) * (n - 2)))[..., None, None]
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


def _check_square(k: Tensor, what: str) -> int:
    if k.dim() < 2 or k.shape[-1] != k.shape[-2]:
        raise CkaLabError(f"{what} must be square (..., n, n) Gram matrices, got shape {tuple(k.shape)}")
    return k.shape[-1]


def u_centre(k: Tensor) -> Tensor:
    """U-centring of Székely & Rizzo (2014), the building block of the unbiased HSIC_1.

    Args:
        k: Gram matrices (..., n, n), n >= 4.

    Returns:
        (..., n, n) float64: zero diagonal, and for i != j
        ``k_ij - r_i/(n-2) - c_j/(n-2) + s/((n-1)(n-2))`` with the sums taken over the zeroed-diagonal k.
    """
    n = _check_square(k, "u_centre input")
    if n < MIN_BATCH:
        raise CkaLabError(f"the unbiased HSIC needs at least {MIN_BATCH} samples per batch, got {n}")
    k = k.to(torch.float64, copy=True)
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return _u_centre_zero_diag_(k)


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 (the papers' name)
    """HSIC_1 of Song et al. (2012), the unbiased HSIC estimator.

    Args:
        k, l: Gram matrices (..., n, n) of the same n >= 4 (broadcastable leading dimensions).

    Returns:
        (...) float64 ``<Ũ(k), Ũ(l)>_F / (n(n-3))``.
    """
    n = _check_square(k, "k")
    if _check_square(l, "l") != n:
        raise CkaLabError(f"k and l must have the same number of samples, got {n} and {l.shape[-1]}")
    return (u_centre(k) * u_centre(l)).sum((-2, -1)) / (n * (n - 3))


def double_centre(k: Tensor) -> Tensor:
    """Biased (double) centring ``H k H`` with ``H = I - 11ᵀ/n``.

    Args:
        k: (..., n, n).

    Returns:
        (..., n, n) float64.
    """
    _check_square(k, "double_centre input")
    k = k.to(torch.float64)
    k = k - k.mean(-1, keepdim=True)
    return k - k.mean(-2, keepdim=True)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Full-batch linear CKA of Kornblith et al. (2019) (biased HSIC), in float64.

    Args:
        x: (N, ...) features of N samples, flattened to (N, Dx).
        y: (N, ...) features of the same N samples, flattened to (N, Dy).

    Returns:
        A float64 scalar in [0, 1]; NaN (with a warning) if one side is constant over the samples
        (``is_constant``). Features are centred over the samples before the float64 Gram. Memory is
        O(N²): for many samples use ``MinibatchCKA`` or ``FullBatchCKA`` / ``cka_by_passes``.
    """
    x, y = as_matrix(x), as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise CkaLabError(f"x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise CkaLabError(f"linear CKA needs at least 2 samples, got {x.shape[0]}")
    kc, square_x, centred_x = full_centred_gram([x])
    lc, square_y, centred_y = full_centred_gram([y.to(x.device)])
    xy, xx, yy = (kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()
    dead = is_constant(torch.stack([square_x, square_y]), torch.stack([centred_x, centred_y])).tolist()
    if dead[0] or dead[1] or xx == 0 or yy == 0:
        side = "x" if dead[0] or xx == 0 else "y"
        warnings.warn(f"linear_cka: {side} is constant over the samples; CKA is undefined (NaN)", stacklevel=2)
        return torch.tensor(math.nan, dtype=torch.float64, device=kc.device)
    return xy / (xx.sqrt() * yy.sqrt())


# --------------------------------------------------------------------------------------------------
# One batch: the U-centred Grams of many layers
# --------------------------------------------------------------------------------------------------


def centred_gram(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Gram of features centred over the batch: ``(X - 1mᵀ)(X - 1mᵀ)ᵀ`` (B, B).

    Its U-centred matrix equals that of ``gram(x)`` but it is well conditioned. The mean is
    accumulated in float64 and the subtraction done in ``dtype``: constant features give exact zeros.
    """
    x = as_matrix(x)
    dtype = dtype or gram_dtype_for(x.dtype)
    x = x.to(dtype)
    centred = x - x.mean(0, keepdim=True, dtype=torch.float64).to(dtype)
    return x_xt(centred)


def u_centred_grams_and_spread(
    features: Sequence[Tensor],
    labels: Sequence[str],
    gram_dtype: torch.dtype | None = None,
    centre: set[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """U-centred Gram matrices of several layers of one batch, stacked and flattened, with each layer's
    spread over the batch, from the same Grams.

    Args:
        features: L tensors (B, ...) with the same B >= 4 (any devices; results go to the first's).
        labels: L names of the layers, for error messages and for ``centre``.
        gram_dtype: dtype of the Gram products; by default per layer ``gram_dtype_for(x.dtype)``.
        centre: labels of layers to centre before the Gram (see the module doc); layers found
            ill-conditioned in this batch are recomputed that way and added to the set.

    Raises:
        CkaLabError: if a layer has NaN or inf features (named in the message).

    Returns:
        (U, square, centred_square): U (L, B*B) float64 as in ``stacked_u_centred_grams``;
        ``square`` (L,) float64 ``Σ_i ||x_i||²`` and ``centred_square`` (L,) float64
        ``Σ_i ||x_i - mean||²`` (the trace of the centred Gram; for an ill-conditioned layer taken
        from the Gram of the centred features, so a constant layer gives ~0, not rounding noise).
        ``is_constant(square, centred_square)`` flags layers without spread.
    """
    centre = set() if centre is None else centre
    xs = [as_matrix(f) for f in features]
    n = xs[0].shape[0]
    device = xs[0].device
    dtypes = [gram_dtype or gram_dtype_for(x.dtype) for x in xs]
    k = torch.empty(len(xs), n, n, dtype=torch.float64, device=device)  # (L, B, B)
    square = torch.empty(len(xs), dtype=torch.float64, device=device)  # (L,)
    for i, (x, label, dtype) in enumerate(zip(xs, labels, dtypes)):
        if label in centre:
            k[i].copy_(centred_gram(x, dtype))
            square[i] = squared_norm(x)
        else:
            k[i].copy_(gram(x, dtype))
    diag = k.diagonal(dim1=1, dim2=2)  # (L, B) view
    trace = diag.sum(1)  # (L,)
    centred_square = trace - k.sum((1, 2)) / n  # (L,) trace(H K H); exact for already centred Grams
    raw = torch.tensor([label not in centre for label in labels], device=device)
    square = torch.where(raw, trace, square)
    scale = trace / n  # (L,) typical squared feature norm
    diag.zero_()
    _u_centre_zero_diag_(k)
    rms = torch.linalg.vector_norm(k.reshape(len(xs), -1), dim=1) / math.sqrt(n * (n - 1))  # (L,)
    limits = torch.tensor(
        [math.inf if label in centre else PRECISION_LIMIT[d] for label, d in zip(labels, dtypes)],
        dtype=torch.float64,
        device=device,
    )
    # one host transfer for all layers: non-finite features; cancellation too large (NaN: all zero)
    flags = torch.stack([~torch.isfinite(scale), ~(scale / rms <= limits)]).cpu()
    bad = [labels[i] for i in flags[0].nonzero().flatten().tolist()]
    if bad:
        raise CkaLabError(
            f"layer {', '.join(bad)} has NaN or inf features (or values whose squares overflow "
            f"{dtypes[labels.index(bad[0])]}); check the model and its inputs before computing CKA"
        )
    for i in flags[1].nonzero().flatten().tolist():
        if labels[i] not in centre:
            centre.add(labels[i])
            again = centred_gram(xs[i], dtypes[i]).to(device=device, dtype=torch.float64)
            centred_square[i] = again.diagonal().sum()
            again.diagonal().zero_()
            k[i] = _u_centre_zero_diag_(again)
    return k.reshape(len(xs), n * n), square, centred_square.clamp(min=0)


# --------------------------------------------------------------------------------------------------
# Constant features
# --------------------------------------------------------------------------------------------------


def squared_norm(x: Tensor) -> Tensor:
    """``Σ x²`` of a (B, ...) tensor as a float64 scalar (squares of float32 values are exact in float64)."""
    return torch.linalg.vector_norm(as_matrix(x), dtype=torch.float64).square()


def is_constant(square: Tensor, centred_square: Tensor, tol: float = CONSTANT_TOL) -> Tensor:
    """Which layers have no spread relative to their scale.

    Args:
        square: (L,) ``Σ ||x_i||²`` over the samples (float64).
        centred_square: (L,) ``Σ ||x_i - mean||²`` over the samples (float64).
        tol: relative tolerance.

    Returns:
        (L,) bool: ``centred_square <= tol * square``; an exactly-zero layer (0 <= 0) is constant too.
    """
    return centred_square <= tol * square


# --------------------------------------------------------------------------------------------------
# The full-batch centred Gram of many batches
# --------------------------------------------------------------------------------------------------

BLOCK_BYTES = 64 * 2**20
"""Largest float64 scratch block (N x d) that ``full_centred_gram`` converts at once."""


def full_centred_gram(
    chunks: Sequence[Tensor], dtype: torch.dtype = torch.float64, block_bytes: int = BLOCK_BYTES
) -> tuple[Tensor, Tensor, Tensor]:
    """Double-centred Gram ``H X Xᵀ H`` of all N samples of one layer, kept as several batches.

    Features are centred over the N samples (mean in float64) before the product, so the Gram is well
    conditioned, then double-centred once more in float64 (which removes the mean's rounding).

    Args:
        chunks: batches (B_b, ...) of one layer, N = Σ B_b rows in all, the same D = Π ... each.
        dtype: the product's dtype: float64 (exact; the default of the biased-full estimator) or
            float32 (oneDNN, relative error ~1e-7, 2-4x faster on CPUs).
        block_bytes: the float64 scratch is at most N x (block_bytes / 8N) columns at a time.

    Returns:
        (K, square, centred_square): K (N, N) float64 centred Gram on the chunks' device;
        ``square = Σ ||x_i||²`` and ``centred_square = Σ ||x_i - mean||²`` float64 scalars.
    """
    xs = [as_matrix(c) for c in chunks]
    if not xs:
        raise CkaLabError("full_centred_gram needs at least one batch of features")
    width = xs[0].shape[1]
    if any(x.shape[1] != width for x in xs):
        raise CkaLabError(f"the batches of one layer must have the same feature size, got {sorted({x.shape[1] for x in xs})}")
    if dtype not in (torch.float32, torch.float64):
        raise CkaLabError(f"the full-batch Gram is computed in torch.float64 or torch.float32, got {dtype}")
    n = sum(x.shape[0] for x in xs)
    device = xs[0].device
    mean = torch.zeros(width, dtype=torch.float64, device=device)
    for x in xs:
        mean += x.sum(0, dtype=torch.float64).to(device)
    mean /= n
    k = torch.zeros(n, n, dtype=torch.float64, device=device)
    square = torch.zeros((), dtype=torch.float64, device=device)
    step = max(1, block_bytes // (8 * n))
    for start in range(0, width, step):
        block = torch.cat([x[:, start : start + step].to(device=device, dtype=torch.float64) for x in xs])  # (N, d)
        square += block.square().sum()
        block -= mean[start : start + step]
        k += block @ block.T if dtype == torch.float64 else x_xt(block.float()).double()
    if not (torch.isfinite(square) and torch.isfinite(k).all()):
        raise CkaLabError("features with NaN or inf values (or values whose squares overflow); check the model and its inputs")
    centred_square = k.diagonal().sum()
    return double_centre(k), square, centred_square
