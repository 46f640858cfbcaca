"""Linear CKA: a functional core and a streaming minibatch accumulator.

Two estimators live here.

* ``linear_cka(x, y)`` -- the full-batch linear CKA of Kornblith et al. (2019), "Similarity of neural
  network representations revisited": with centred features ``Xc``, ``Yc`` of shape (N, D),
  ``CKA = ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)``, computed here through the centred Gram matrices
  ``H K H`` (``H = I - 11ᵀ/N``). It needs all N samples at once (N×N memory) and is biased for small N.

* ``MinibatchCKA`` -- the minibatch linear CKA of Nguyen, Raghu & Kornblith (2021), "Do wide and deep
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
Values slightly below 0 are legitimate (an unbiased estimate of a near-zero similarity). A layer whose
features are constant over every batch has a zero self term: its cells are NaN, with a warning.

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
features of the benchmark have ratios of 70..190 (CKA error ~3e-7).

Speed: the Grams are nearly all the work (``benchmarks/cka_speed.py``: 2·B²·D FLOPs per layer and
batch, 0.27x the FLOPs of the benchmark's forward passes). ``x_xt`` sends float32 CPU products to
oneDNN's inner-product kernel, which runs near the CPU's FMA peak where MKL's (PyTorch's default for
``x @ x.T``) runs at half of it on AMD processors; CUDA and float64 products use ``x @ x.T``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError

__all__ = [
    "MIN_BATCH",
    "MinibatchCKA",
    "centred_gram",
    "double_centre",
    "gram",
    "linear_cka",
    "minibatch_cka",
    "u_centre",
    "unbiased_hsic",
    "x_xt",
]

MIN_BATCH = 4
"""The unbiased HSIC_1 divides by n(n-3): a batch needs at least 4 samples."""

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
        A float64 scalar in [0, 1]; NaN (with a warning) if one side is constant over the samples.
        Memory is O(N²): for many samples use ``MinibatchCKA``.
    """
    x, y = as_matrix(x), as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise CkaLabError(f"x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise CkaLabError(f"linear CKA needs at least 2 samples, got {x.shape[0]}")
    kc = double_centre(gram(x, torch.float64))
    lc = double_centre(gram(y, torch.float64).to(kc.device))
    xy, xx, yy = (kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()
    if xx == 0 or yy == 0:
        side = "x" if xx == 0 else "y"
        warnings.warn(f"linear_cka: {side} is constant over the samples; CKA is undefined (NaN)", stacklevel=2)
        return torch.tensor(math.nan, dtype=torch.float64, device=kc.device)
    return xy / (xx.sqrt() * yy.sqrt())


def minibatch_cka(batches_x: Iterable[Tensor], batches_y: Iterable[Tensor]) -> Tensor:
    """Minibatch linear CKA (Nguyen et al. 2021) of one pair of representations.

    Args:
        batches_x: batches (B_b, ...) of the first representation.
        batches_y: batches (B_b, ...) of the second representation, the same samples in the same order.

    Returns:
        A float64 scalar: Σ_b HSIC_1(K_b, L_b) / sqrt(Σ_b HSIC_1(K_b, K_b) · Σ_b HSIC_1(L_b, L_b)).
    """
    metric = MinibatchCKA(["x"], ["y"])
    try:
        for x, y in zip(batches_x, batches_y, strict=True):
            metric.update({"x": x}, {"y": y})
    except ValueError as err:  # zip(strict=True): one side ran out first
        raise CkaLabError("batches_x and batches_y must yield the same number of batches") from err
    return metric.compute()[0, 0]


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


def stacked_u_centred_grams(
    features: Sequence[Tensor],
    labels: Sequence[str],
    gram_dtype: torch.dtype | None = None,
    centre: set[str] | None = None,
) -> Tensor:
    """U-centred Gram matrices of several layers of one batch, stacked and flattened.

    Args:
        features: L tensors (B, ...) with the same B >= 4 (any devices; results go to the first's).
        labels: L names of the layers, for error messages and for ``centre``.
        gram_dtype: dtype of the Gram products; by default per layer ``gram_dtype_for(x.dtype)``.
        centre: labels of layers to centre before the Gram (see the module doc); layers found
            ill-conditioned in this batch are recomputed that way and added to the set.

    Returns:
        U: (L, B*B) float64 on ``features[0]``'s device, row i the flattened ``Ũ(X_i X_iᵀ)``.

    Raises:
        CkaLabError: if a layer has NaN or inf features (named in the message).
    """
    centre = set() if centre is None else centre
    xs = [as_matrix(f) for f in features]
    n = xs[0].shape[0]
    device = xs[0].device
    dtypes = [gram_dtype or gram_dtype_for(x.dtype) for x in xs]
    k = torch.empty(len(xs), n, n, dtype=torch.float64, device=device)  # (L, B, B)
    for i, (x, label, dtype) in enumerate(zip(xs, labels, dtypes)):
        k[i].copy_(centred_gram(x, dtype) if label in centre else gram(x, dtype))
    diag = k.diagonal(dim1=1, dim2=2)  # (L, B) view
    scale = diag.mean(1)  # (L,) typical squared feature norm
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
            again.diagonal().zero_()
            k[i] = _u_centre_zero_diag_(again)
    return k.reshape(len(xs), n * n)


# --------------------------------------------------------------------------------------------------
# The accumulator
# --------------------------------------------------------------------------------------------------


def _layer_list(layers: Sequence[str], what: str) -> list[str]:
    if isinstance(layers, str):
        raise CkaLabError(f"{what} must be a list of layer names, not the string {layers!r}")
    out = list(layers)
    if not out:
        raise CkaLabError(f"{what} is empty: give at least one layer name")
    if len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        raise CkaLabError(f"{what} names a layer twice ({', '.join(dup)}); give each layer once")
    return out


class MinibatchCKA:
    """Streaming minibatch linear CKA between layers of two models (Nguyen et al. 2021).

    Per ``update`` (one batch of n >= 4 samples): one Gram matrix per layer, U-centred once, and one
    matrix product for all cross and self HSIC_1 terms; float64 sums over batches. Memory is
    O(L·n²) per batch and O(La·Lb) in total, independent of the number of samples.

    Args:
        layers_a: La layer names of model A (keys of ``feats_a`` in ``update``).
        layers_b: Lb layer names of model B.
        keep_batches: also keep each batch's HSIC values (n_batches × (La·Lb + La + Lb) floats) for
            ``confidence_interval``.
        gram_dtype: dtype of the Gram products (default: float32, or float64 for float64 features);
            U-centring and sums are always float64.

    Example:
        >>> metric = MinibatchCKA(ext_a.layers, ext_b.layers)
        >>> for x in loader:
        ...     model_a(x); model_b(x)
        ...     metric.update(ext_a.features, ext_b.features)
        >>> metric.compute()  # (La, Lb) float64

    Batches are weighted equally, whatever their size (each HSIC_1 is an unbiased estimate). The
    state lives on the features' device; each ``update`` makes one small device-to-host copy (the
    NaN and precision flags of its layers).
    """

    def __init__(
        self,
        layers_a: Sequence[str],
        layers_b: Sequence[str],
        *,
        keep_batches: bool = False,
        gram_dtype: torch.dtype | None = None,
    ) -> None:
        self.layers_a = _layer_list(layers_a, "layers_a")
        self.layers_b = _layer_list(layers_b, "layers_b")
        self.keep_batches = keep_batches
        if gram_dtype not in (None, torch.float32, torch.float64):
            raise CkaLabError(f"gram_dtype must be torch.float32, torch.float64 or None, got {gram_dtype}")
        self.gram_dtype = gram_dtype
        self.reset()

    # ---- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every batch."""
        shape_a, shape_b = len(self.layers_a), len(self.layers_b)
        self.hsic_ab = torch.zeros(shape_a, shape_b, dtype=torch.float64)  # (La, Lb) Σ_b HSIC(K_i, L_j)
        self.hsic_aa = torch.zeros(shape_a, dtype=torch.float64)  # (La,) Σ_b HSIC(K_i, K_i)
        self.hsic_bb = torch.zeros(shape_b, dtype=torch.float64)  # (Lb,) Σ_b HSIC(L_j, L_j)
        self.n_batches = 0
        self.n_samples = 0
        self.batches: list[tuple[Tensor, Tensor, Tensor]] = []  # per batch (ab, aa, bb) if keep_batches
        self.centred_layers: set[str] = set()  # layers whose features are centred before the Gram
        self._reduced = False

    def _features(self, feats: Mapping[str, Tensor], layers: list[str], side: str) -> list[Tensor]:
        missing = [name for name in layers if name not in feats]
        if missing:
            have = ", ".join(list(feats)[:8]) or "nothing"
            raise CkaLabError(
                f"feats_{side} has no layer {', '.join(repr(m) for m in missing)} (it has: {have}); "
                f"pass the features of every layer in layers_{side}, e.g. FeatureExtractor.features "
                "right after the forward pass (a layer not called in that pass is missing)"
            )
        out = [feats[name] for name in layers]
        for name, f in zip(layers, out):
            if not isinstance(f, Tensor) or f.dim() == 0:
                raise CkaLabError(f"feats_{side}[{name!r}] must be a (B, ...) tensor, got {type(f).__name__}")
        return out

    @torch.no_grad()
    def update(self, feats_a: Mapping[str, Tensor], feats_b: Mapping[str, Tensor]) -> None:
        """Add one batch.

        Args:
            feats_a: layer name -> (B, ...) features of model A, for every name in ``layers_a``.
            feats_b: layer name -> (B, ...) features of model B for the same B samples.
        """
        if self._reduced:
            raise CkaLabError("this MinibatchCKA was all-reduced; call reset() before adding batches")
        xa = self._features(feats_a, self.layers_a, "a")
        xb = self._features(feats_b, self.layers_b, "b")
        n = xa[0].shape[0]
        for side, names, xs in (("a", self.layers_a, xa), ("b", self.layers_b, xb)):
            for name, x in zip(names, xs):
                if x.shape[0] != n:
                    raise CkaLabError(
                        f"batch size mismatch: layer {self.layers_a[0]!r} of model A has {n} samples but "
                        f"layer {name!r} of model {side.upper()} has {x.shape[0]}; feed the same batch to both"
                    )
        if n < MIN_BATCH:
            raise CkaLabError(
                f"a batch of {n} samples is too small: the unbiased HSIC needs at least {MIN_BATCH}; "
                "use larger batches (or drop_last=True for a small last batch)"
            )
        # one Gram per distinct tensor (comparing a model with itself shares them)
        slot: dict[int, int] = {}
        unique: list[Tensor] = []
        labels: list[str] = []
        sides = [f"{name!r} (model A)" for name in self.layers_a] + [f"{name!r} (model B)" for name in self.layers_b]
        for label, x in zip(sides, xa + xb):
            if id(x) not in slot:
                slot[id(x)] = len(unique)
                unique.append(x)
                labels.append(label)
        idx_a = [slot[id(x)] for x in xa]
        idx_b = [slot[id(x)] for x in xb]
        u = stacked_u_centred_grams(unique, labels, self.gram_dtype, self.centred_layers)  # (Lu, n*n)
        inner = (u @ u.T) / (n * (n - 3))  # (Lu, Lu): every HSIC_1 of the batch
        self_terms = inner.diagonal()
        ia = torch.tensor(idx_a, device=inner.device)
        ib = torch.tensor(idx_b, device=inner.device)
        ab, aa, bb = inner[ia][:, ib], self_terms[ia], self_terms[ib]
        if self.n_batches == 0:
            device = inner.device
            self.hsic_ab, self.hsic_aa, self.hsic_bb = (
                self.hsic_ab.to(device), self.hsic_aa.to(device), self.hsic_bb.to(device)
            )
        # out of place: the state may be created inside torch.inference_mode()
        self.hsic_ab = self.hsic_ab + ab
        self.hsic_aa = self.hsic_aa + aa
        self.hsic_bb = self.hsic_bb + bb
        if self.keep_batches:
            self.batches.append((ab, aa, bb))
        self.n_batches += 1
        self.n_samples += n

    # ---- results ------------------------------------------------------------------------------

    def _ratio(self, ab: Tensor, aa: Tensor, bb: Tensor) -> Tensor:
        """(..., La, Lb), (..., La), (..., Lb) HSIC sums -> (..., La, Lb) CKA, NaN where undefined."""
        denom = (aa.unsqueeze(-1) * bb.unsqueeze(-2)).sqrt()
        return torch.where(denom > 0, ab / denom, torch.full_like(ab, math.nan))

    def compute(self) -> Tensor:
        """The CKA matrix: (La, Lb) float64, on the device of the features (CPU before any update).

        Cells of a layer whose features were constant over every batch are NaN, with a warning.
        """
        if self.n_batches == 0:
            raise CkaLabError("no batch was added: call update() with the features of at least one batch")
        dead = [n for n, v in zip(self.layers_a, self.hsic_aa.tolist()) if v <= 0]
        dead += [n for n, v in zip(self.layers_b, self.hsic_bb.tolist()) if v <= 0 and n not in dead]
        if dead:
            warnings.warn(
                f"layer {', '.join(repr(d) for d in dead)} has constant features over all "
                f"{self.n_samples} samples; its CKA is undefined and set to NaN",
                stacklevel=2,
            )
        return self._ratio(self.hsic_ab, self.hsic_aa, self.hsic_bb)

    def confidence_interval(
        self, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Percentile bootstrap over batches (needs ``keep_batches=True`` and >= 2 batches).

        Each replicate draws n_batches batches with replacement and recomputes the ratio of sums.

        Returns:
            (low, high): two (La, Lb) float64 CPU tensors, the (1-level)/2 and (1+level)/2 quantiles.
        """
        if not self.keep_batches:
            raise CkaLabError("confidence_interval needs the per-batch values: create MinibatchCKA(..., keep_batches=True)")
        n_b = len(self.batches)
        if n_b < 2:
            raise CkaLabError(f"a bootstrap over batches needs at least 2 batches, got {n_b}")
        if not 0 < level < 1:
            raise CkaLabError(f"level must be in (0, 1), got {level}")
        ab = torch.stack([b[0] for b in self.batches]).cpu()  # (n_b, La, Lb)
        aa = torch.stack([b[1] for b in self.batches]).cpu()  # (n_b, La)
        bb = torch.stack([b[2] for b in self.batches]).cpu()  # (n_b, Lb)
        gen = torch.Generator().manual_seed(seed)
        draws = torch.randint(n_b, (n_boot, n_b), generator=gen)
        counts = torch.zeros(n_boot, n_b, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(n_boot, n_b, dtype=torch.float64)
        )  # (n_boot, n_b)
        la, lb = ab.shape[1:]
        boot = self._ratio(
            (counts @ ab.reshape(n_b, -1)).reshape(n_boot, la, lb), counts @ aa, counts @ bb
        )  # (n_boot, La, Lb)
        alpha = (1 - level) / 2
        q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
        low, high = torch.nanquantile(boot, q, dim=0)
        return low, high

    # ---- combining ----------------------------------------------------------------------------

    def merge(self, other: MinibatchCKA) -> MinibatchCKA:
        """Add the batches of ``other`` (same layers) to this one, in place; returns self."""
        if (other.layers_a, other.layers_b) != (self.layers_a, self.layers_b):
            raise CkaLabError("merge needs two MinibatchCKA over the same layers_a and layers_b, in the same order")
        if other.keep_batches != self.keep_batches:
            raise CkaLabError("merge needs the same keep_batches setting on both MinibatchCKA")
        if other.n_batches == 0:
            return self
        device = other.hsic_ab.device if self.n_batches == 0 else self.hsic_ab.device
        self.hsic_ab = self.hsic_ab.to(device) + other.hsic_ab.to(device)
        self.hsic_aa = self.hsic_aa.to(device) + other.hsic_aa.to(device)
        self.hsic_bb = self.hsic_bb.to(device) + other.hsic_bb.to(device)
        self.batches = self.batches + [tuple(t.to(device) for t in b) for b in other.batches]
        self.n_batches += other.n_batches
        self.n_samples += other.n_samples
        return self

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the accumulators over the ranks of a ``torch.distributed`` group, in place.

        Call it once on every rank after the last ``update``; afterwards every rank holds the totals
        and ``compute()`` gives the same matrix everywhere. Per-batch values (``keep_batches``) are
        gathered in rank order. All ranks must use the same layer lists.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise CkaLabError("torch.distributed is not initialised: call init_process_group first (or use merge)")
        if self._reduced:
            raise CkaLabError("this MinibatchCKA was already all-reduced; reset() before accumulating again")
        device = self.hsic_ab.device
        if self.n_batches == 0 and dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        la, lb = len(self.layers_a), len(self.layers_b)
        counts = torch.tensor([self.n_batches, self.n_samples], dtype=torch.float64)
        flat = torch.cat([self.hsic_ab.flatten().cpu(), self.hsic_aa.cpu(), self.hsic_bb.cpu(), counts])
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat.to(self.hsic_ab.device) if self.n_batches else flat
        self.hsic_ab = flat[: la * lb].reshape(la, lb)
        self.hsic_aa = flat[la * lb : la * lb + la]
        self.hsic_bb = flat[la * lb + la : la * lb + la + lb]
        self.n_batches, self.n_samples = (int(v) for v in flat[-2:].tolist())
        if self.keep_batches:
            mine = [tuple(t.cpu() for t in b) for b in self.batches]
            gathered: list[object] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, mine, group=group)
            self.batches = [
                tuple(t.to(flat.device) for t in b) for rank_batches in gathered for b in rank_batches  # type: ignore[union-attr]
            ]
        self._reduced = True

    def __repr__(self) -> str:
        return (
            f"MinibatchCKA({len(self.layers_a)}×{len(self.layers_b)} layers, "
            f"{self.n_batches} batches, {self.n_samples} samples)"
        )
