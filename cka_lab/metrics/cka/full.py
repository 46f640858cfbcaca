"""``FullBatchCKA``: the biased full-batch linear CKA of Kornblith et al. (2019), exact, in float64.

``HSIC(K, L) = tr(K H L H) / (N-1)²`` with ``H = I - 11ᵀ/N`` over all N crops, and
``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` -- the estimator of the EDT authors' Fig. 2
(yuanli2333/CKA-Centered-Kernel-Alignment). Every crop's features are needed at once: the
accumulator keeps them (``update``) until ``compute``, which forms one N x N float64 centred Gram
per layer (``cka_functional.full_centred_gram``) and the inner products of all pairs. Beyond one
process's memory, ``cka_by_passes`` fills the Grams layer group by layer group.

Memory: ``N · D · itemsize`` bytes of features per layer (566 MB for an EDT-T block at 48 px and
N = 1024) up to ``max_bytes`` (a one-line error beyond), plus ``L · N² · 8`` bytes of Grams.

Interval: from the *debiased* CKA of the same N crops (the ratio of Song et al.'s unbiased HSIC_1 over
all N crops, ``deleted_group_unbiased``), not from the biased estimate. The biased estimator's O(D/N)
bias is not removed by a jackknife bias correction when the feature dimension D is comparable to or
larger than N: in the linear-Gaussian case of ``tests/metrics/test_cka_coverage.py`` (population CKA
0.2, N = 128) the bias-corrected jackknife interval of the *biased* CKA covered the truth in 91 % of
200 draws at D = 16 but 0 % at D = 64, 256 and 4096, while the interval of the debiased CKA covers it
at every D tested (``COVERAGE.md`` in the tests). The interval is the bias-corrected jackknife interval
``debiased - bias_jack ± t_{G-1} · se_jack`` over ``n_groups`` contiguous groups of crops (default 32;
the crops in the order they were added); each replicate is the debiased CKA of the other N - m crops,
all from the kept Grams in O(La·Lb·N²) without recomputing any Gram (HSIC_1 is unchanged by the
double centring). The reported ``matrix`` stays the paper's biased estimate, which can lie outside its
own interval; ``CKAResult.interval_estimate`` holds the debiased CKA and ``CKAResult.bias`` the
distance of the biased estimate from the interval's centre. The cost at N = 1024 and 50 x 50 layers: 4.7 s on one loaded
CPU thread, next to the Grams themselves (2·N²·D FLOPs per layer: 290 GFLOP in float64 for an EDT-T
block at 48 px).

Constant layers: ``Σ||x_i - mean||² <= tol · Σ||x_i||²`` over the N crops -> NaN cells, a warning,
and the layer listed in ``result()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka.functional import CONSTANT_TOL, as_matrix, full_centred_gram, is_constant
from cka_lab.metrics.cka.inputs import layer_list, same_batch, select_features
from cka_lab.metrics.cka.protocol import CKAAccumulator
from cka_lab.metrics.cka.result import CKAResult, jackknife_interval
from cka_lab.metrics.cka.spec import DEFAULT_MAX_BYTES, N_GROUPS, CKASpec

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FullBatchCKA",
    "LayerGrams",
    "cka_ratio",
    "deleted_group_inner",
    "deleted_group_unbiased",
    "deleted_group_unbiased_self",
    "grams_result",
    "group_bounds",
    "half_maps",
]

def gib(n: float) -> str:
    """A number of bytes for messages: GiB, MiB or bytes."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{int(n)} bytes"


@dataclass
class LayerGrams:
    """Centred N x N Grams of L layers and their spread.

    Attributes:
        grams: (L, N, N) float64 double-centred Grams ``H X Xᵀ H``.
        square: (L,) float64 ``Σ_i ||x_i||²``.
        centred: (L,) float64 ``Σ_i ||x_i - mean||²``.
    """

    grams: Tensor
    square: Tensor
    centred: Tensor


def group_bounds(n: int, n_groups: int) -> list[tuple[int, int]]:
    """``min(n_groups, n)`` contiguous groups of near-equal size covering ``range(n)``: [(start, stop)]."""
    g = max(1, min(n_groups, n))
    edges = [round(i * n / g) for i in range(g + 1)]
    return list(zip(edges[:-1], edges[1:]))


def deleted_group_inner(a: Tensor, b: Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Biased HSIC inner products of all pairs, on all crops and with each group of crops left out.

    For crops S (the complement of group g, n = |S|) and symmetric Grams A, B,
    ``<H_S A_S H_S, H_S B_S H_S> = tr(A_S B_S) - (2/n) Σ_{k∈S} a_k b_k + (Σ_S a)(Σ_S b)/n²`` with
    ``a_k = Σ_{i∈S} A_ki``; ``tr(A_S B_S) = T - 2 Q_g + W_g`` from the row-group sums
    ``Q_g = Σ_{i∈g, j} A_ij B_ij`` and the diagonal blocks ``W_g = Σ_{i,j∈g} A_ij B_ij``.

    Args:
        a: (La, N, N) symmetric float64 (centred) Grams.
        b: (Lb, N, N) symmetric float64 (centred) Grams.
        bounds: G groups (start, stop) partitioning range(N).

    Returns:
        (full, deleted): (La, Lb) ``<H A H, H B H>`` over all crops and (G, La, Lb) over each S_g
        (both without the 1/(N-1)² factor, which cancels in CKA).
    """
    la = a.shape[0]
    lb = b.shape[0]
    q = torch.empty(len(bounds), la, lb, dtype=torch.float64, device=a.device)  # row-group sums
    w = torch.empty_like(q)  # diagonal blocks
    for g, (s, e) in enumerate(bounds):
        q[g] = a[:, s:e, :].reshape(la, -1) @ b[:, s:e, :].reshape(lb, -1).T
        w[g] = a[:, s:e, s:e].reshape(la, -1) @ b[:, s:e, s:e].reshape(lb, -1).T
    total = q.sum(0)  # (La, Lb) tr(A B)
    row_a, sums_a, sizes = _rows_left_in(a, bounds)  # (G, La, N), (G, La), (G,)
    row_b, sums_b, _ = _rows_left_in(b, bounds)
    rows = row_a @ row_b.transpose(1, 2)  # (G, La, Lb) Σ_{k∈S} a_k b_k
    nn = sizes[:, None, None]
    deleted = total - 2 * q + w - 2 / nn * rows + sums_a[:, :, None] * sums_b[:, None, :] / nn**2
    return total, deleted


def _group_index(n: int, bounds: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    """(N,) long: the group of every crop."""
    gid = torch.empty(n, dtype=torch.long, device=device)
    for g, (s, e) in enumerate(bounds):
        gid[s:e] = g
    return gid


def _rows_left_in(a: Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Row sums over the crops left in, for every left-out group.

    Returns:
        (rows, sums, sizes): rows (G, L, N) ``a_k = Σ_{i∉g} A_ki`` (zero for k in g), sums (G, L) their
        totals over k ∉ g, sizes (G,) float64 ``N - |g|``.
    """
    l, n = a.shape[0], a.shape[1]
    gid = _group_index(n, bounds, a.device)
    per_group = torch.zeros(l, n, len(bounds), dtype=torch.float64, device=a.device).index_add_(2, gid, a)  # (L, N, G)
    left_in = a.sum(-1, keepdim=True) - per_group  # (L, N, G)
    keep = gid[:, None] != torch.arange(len(bounds), device=a.device)[None, :]  # (N, G)
    rows = (left_in * keep).permute(2, 0, 1)  # (G, L, N)
    sizes = keep.sum(0).to(torch.float64)
    return rows, rows.sum(-1), sizes


def _diag_left_in(a: Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The diagonals of (L, N, N) Grams -> (diag (L, N), keep (G, N) float64: 1 where crop k is left in)."""
    n = a.shape[-1]
    gid = _group_index(n, bounds, a.device)
    keep = (gid[None, :] != torch.arange(len(bounds), device=a.device)[:, None]).to(torch.float64)  # (G, N)
    return a.diagonal(dim1=-2, dim2=-1), keep


def _song_hsic(trace: Tensor, diag_prod: Tensor, sum_a: Tensor, sum_b: Tensor, rows: Tensor, n: Tensor) -> Tensor:
    """Song et al.'s HSIC_1 from the pieces of the zero-diagonal Grams K~, L~ of n crops:
    ``[tr(K~L~) + 1ᵀK~1·1ᵀL~1/((n-1)(n-2)) - 2/(n-2)·1ᵀK~L~1] / (n(n-3))`` with
    ``tr(K~L~) = trace - diag_prod``."""
    return (trace - diag_prod + sum_a * sum_b / ((n - 1) * (n - 2)) - 2 / (n - 2) * rows) / (n * (n - 3))


def deleted_group_unbiased(a: Tensor, b: Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The unbiased HSIC_1 (Song et al. 2012) of all pairs, on all N crops and with each group left out.

    The debiased CKA of the same full batch (the ratio of HSIC_1 values; Nguyen et al. 2021 with one
    unit of N crops) is built from these. The Grams may be raw or double-centred: HSIC_1 does not
    change under ``K_ij -> K_ij + c_i + c_j + c`` (its U-centring removes such shifts), so the centred
    Grams that biased-full keeps serve. For the crops S left in (n = |S| >= 4), with ``d`` the diagonal
    and ``a_k = Σ_{i∈S, i≠k} A_ki``: ``tr(Ã_S B̃_S) = tr(A_S B_S) - Σ_{k∈S} d^A_k d^B_k``,
    ``1ᵀÃ_S1 = Σ_{k∈S} a_k`` and ``1ᵀÃ_S B̃_S 1 = Σ_{k∈S} a_k b_k``; ``tr(A_S B_S)`` comes from the same
    row-group sums as :func:`deleted_group_inner`. O(La·Lb·N²), no Gram recomputed.

    Args:
        a: (La, N, N) symmetric float64 Grams.
        b: (Lb, N, N) symmetric float64 Grams of the same crops.
        bounds: G groups (start, stop) partitioning range(N); every complement must hold >= 4 crops.

    Returns:
        (full, deleted): (La, Lb) HSIC_1 over all crops and (G, La, Lb) over each complement S_g.
    """
    la, n = a.shape[0], a.shape[1]
    lb = b.shape[0]
    if n - max(e - s for s, e in bounds) < 4 or n < 4:
        raise CkaLabError(f"the unbiased HSIC needs at least 4 crops left in every jackknife replicate, got {n} crops "
                          f"in groups of up to {max(e - s for s, e in bounds)}")
    g = len(bounds)
    q = torch.empty(g, la, lb, dtype=torch.float64, device=a.device)
    w = torch.empty_like(q)
    for k, (s, e) in enumerate(bounds):
        q[k] = a[:, s:e, :].reshape(la, -1) @ b[:, s:e, :].reshape(lb, -1).T
        w[k] = a[:, s:e, s:e].reshape(la, -1) @ b[:, s:e, s:e].reshape(lb, -1).T
    total = q.sum(0)  # (La, Lb) tr(A B)
    da, keep = _diag_left_in(a, bounds)  # (La, N), (G, N)
    db = b.diagonal(dim1=-2, dim2=-1)  # (Lb, N)
    dd_full = da @ db.T  # (La, Lb)
    dd = (keep[:, None, :] * da[None]) @ db.T  # (G, La, Lb) Σ_{k∈S} d^A_k d^B_k
    rows_a = a.sum(-1) - da  # (La, N) off-diagonal row sums over all crops
    rows_b = b.sum(-1) - db
    nf = torch.tensor(float(n), dtype=torch.float64, device=a.device)
    full = _song_hsic(total, dd_full, rows_a.sum(-1)[:, None], rows_b.sum(-1)[None, :], rows_a @ rows_b.T, nf)
    left_a, _, sizes = _rows_left_in(a, bounds)  # (G, La, N) including the diagonal, zero for k in g
    left_b, _, _ = _rows_left_in(b, bounds)
    left_a = left_a - keep[:, None, :] * da[None]  # off-diagonal sums over S, for k in S
    left_b = left_b - keep[:, None, :] * db[None]
    nn = sizes[:, None, None]
    deleted = _song_hsic(total - 2 * q + w, dd, left_a.sum(-1)[:, :, None], left_b.sum(-1)[:, None, :],
                         left_a @ left_b.transpose(1, 2), nn)
    return full, deleted


def deleted_group_unbiased_self(a: Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """``deleted_group_unbiased(a_l, a_l)`` of every layer l alone (the debiased CKA's denominators).

    Args:
        a: (L, N, N) symmetric float64 Grams.
        bounds: G groups (start, stop) partitioning range(N).

    Returns:
        (full, deleted): (L,) HSIC_1(A_l, A_l) and (G, L) the same over each S_g.
    """
    l, n = a.shape[0], a.shape[1]
    g = len(bounds)
    if n - max(e - s for s, e in bounds) < 4 or n < 4:
        raise CkaLabError(f"the unbiased HSIC needs at least 4 crops left in every jackknife replicate, got {n} crops")
    gid = _group_index(n, bounds, a.device)
    total = torch.empty(l, dtype=torch.float64, device=a.device)
    q = torch.empty(g, l, dtype=torch.float64, device=a.device)
    w = torch.empty(g, l, dtype=torch.float64, device=a.device)
    for i in range(l):
        square = a[i] * a[i]  # (N, N)
        by_row = square.sum(1)
        total[i] = by_row.sum()
        q[:, i] = torch.zeros(g, dtype=torch.float64, device=a.device).index_add_(0, gid, by_row)
        blocks = torch.zeros(n, g, dtype=torch.float64, device=a.device).index_add_(1, gid, square)
        w[:, i] = torch.zeros(g, g, dtype=torch.float64, device=a.device).index_add_(0, gid, blocks).diagonal()
    da, keep = _diag_left_in(a, bounds)  # (L, N), (G, N)
    nf = torch.tensor(float(n), dtype=torch.float64, device=a.device)
    rows = a.sum(-1) - da  # (L, N)
    full = _song_hsic(total, da.square().sum(-1), rows.sum(-1), rows.sum(-1), rows.square().sum(-1), nf)
    left, _, sizes = _rows_left_in(a, bounds)  # (G, L, N)
    left = left - keep[:, None, :] * da[None]
    dd = keep @ da.square().T  # (G, L)
    nn = sizes[:, None]
    deleted = _song_hsic(total - 2 * q + w, dd, left.sum(-1), left.sum(-1), left.square().sum(-1), nn)
    return full, deleted


def cka_ratio(xy: Tensor, xx: Tensor, yy: Tensor, dead: Tensor) -> Tensor:
    """(..., L, L) inner products and (..., L) self terms -> CKA, NaN for dead (constant) layers."""
    denom = (xx.clamp(min=0).unsqueeze(-1) * yy.clamp(min=0).unsqueeze(-2)).sqrt()
    ok = (denom > 0) & ~dead.unsqueeze(-1) & ~dead.unsqueeze(-2)
    return torch.where(ok, xy / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(xy, math.nan))


def half_maps(grams: LayerGrams, unit: int, dead: Tensor) -> tuple[Tensor, Tensor]:
    """The biased CKA of the even and of the odd units of ``unit`` crops (two disjoint draws of the
    crops), each (L, L), from the full centred Grams re-centred over the half."""
    n = grams.grams.shape[-1]
    idx = torch.arange(n)
    out = []
    for parity in (0, 1):
        sel = idx[(idx // unit) % 2 == parity]
        g = grams.grams[:, sel][:, :, sel]
        g = g - g.mean(-1, keepdim=True)
        g = g - g.mean(-2, keepdim=True)  # re-centred over the half: the half's own centred Gram
        flat = g.reshape(g.shape[0], -1)
        inner = flat @ flat.T
        out.append(cka_ratio(inner, inner.diagonal(), inner.diagonal(), dead).cpu())
    return out[0], out[1]


def _block(x: Tensor, rows: Sequence[int], cols: Sequence[int]) -> Tensor:
    """``x[..., rows, :][..., cols]``: the (..., rows, cols) block."""
    return x[..., list(rows), :][..., list(cols)]


def grams_result(grams: LayerGrams, names: Sequence[str], rows: Sequence[int], cols: Sequence[int], spec: CKASpec,
                 *, passes: int = 1, intervals: bool = True) -> CKAResult:
    """Biased full-batch CKA, its delete-a-group jackknife interval and replicates, from centred Grams.

    The CKA of every pair of the L layers whose Grams are given (each Gram once, however many pairs it
    is in) and the (rows, cols) block of it in the result: for two models, A's layers then B's, rows
    A's and cols B's; for all pairs of one list of layers (e.g. both models' layers at once), rows =
    cols = all.

    Args:
        grams: (L, N, N) centred Grams of the same N crops and their spread.
        names: the L layer names.
        rows, cols: the layers of the result's rows (``layers_a``) and columns (``layers_b``).
        spec: ``n_groups`` / ``groups`` (jackknife groups), ``level``, ``tol``, ``halves`` with
            ``unit_size`` (the even- and odd-unit maps).
        passes: recorded in the result.
        intervals: compute the jackknife (False: the matrix only).
    """
    a = grams.grams
    n = a.shape[-1]
    if n < 2:
        raise CkaLabError(f"biased-full CKA needs at least 2 crops, got {n}")
    dead = is_constant(grams.square, grams.centred, spec.tol)
    const_a = [names[i] for i in rows if dead[i]]
    const_b = [names[j] for j in cols if dead[j]]
    if const_a or const_b:
        warnings.warn(
            f"layer {', '.join(repr(d) for d in const_a + [x for x in const_b if x not in const_a])} has constant "
            f"features over all {n} samples (centred variance <= {spec.tol:g} x its mean square); its CKA is "
            "undefined and set to NaN",
            stacklevel=3,
        )
    dead = dead.to(a.device)
    bounds = (list(spec.groups) if spec.groups is not None else group_bounds(n, spec.n_groups)) if intervals else [(0, n)]
    full, _ = deleted_group_inner(a, a, [(0, n)])
    estimate = _block(cka_ratio(full, full.diagonal(), full.diagonal(), dead).cpu(), rows, cols)
    lower = upper = bias = debiased = replicates = None
    interval = "none"
    if intervals and len(bounds) >= 2 and n - max(e - s for s, e in bounds) >= 4:
        # intervals from the debiased CKA of the same crops (see the module doc): the biased estimate's
        # jackknife does not cover at feature dimensions D >= N
        u_full, u_deleted = deleted_group_unbiased(a, a, bounds)
        debiased_t = _block(cka_ratio(u_full, u_full.diagonal(), u_full.diagonal(), dead).cpu(), rows, cols)
        selfs = u_deleted.diagonal(dim1=-2, dim2=-1)  # (G, L)
        replicates_t = _block(cka_ratio(u_deleted, selfs, selfs, dead).cpu(), rows, cols)
        low, high, _ = jackknife_interval(debiased_t, replicates_t, spec.level)
        lower, upper, debiased, replicates = low.numpy(), high.numpy(), debiased_t.numpy(), replicates_t.numpy()
        bias = estimate.numpy() - (lower + upper) / 2
        interval = (f"debiased CKA (unbiased HSIC_1 of the same {n} crops): delete-a-group bias-corrected jackknife "
                    f"over {len(bounds)} groups of crops, Student t with {len(bounds) - 1} df")
    halves = None
    if spec.halves and n >= 4 * spec.unit_size:
        halves = tuple(_block(h, rows, cols).numpy() for h in half_maps(grams, spec.unit_size, dead))
    size = max(e - s for s, e in bounds)
    return CKAResult(
        matrix=estimate.numpy().astype(np.float64),
        estimator="biased-full",
        n_samples=n,
        layers_a=tuple(names[i] for i in rows),
        layers_b=tuple(names[j] for j in cols),
        lower=lower,
        upper=upper,
        level=spec.level,
        unit=f"jackknife group of {size} crops",
        unit_size=size,
        n_units=len(bounds),
        interval=interval,
        constant_a=tuple(const_a),
        constant_b=tuple(const_b),
        bias=bias,
        passes=passes,
        interval_estimate=debiased,
        replicates=replicates,
        halves=halves,
    )


class FullBatchCKA(CKAAccumulator):
    """Exact biased full-batch linear CKA (Kornblith et al. 2019) between layers of two models.

    Args:
        layers_a: La layer names of model A; one of the two lists may be empty (e.g. one pass of
            ``cka_by_passes``), not both.
        layers_b: Lb layer names of model B.
        max_bytes: budget for the features kept until ``compute``; an ``update`` beyond it is a
            one-line CkaLabError.
        n_groups: jackknife groups of crops for the interval.
        gram_dtype: float64 (exact, the default) or float32 (oneDNN, ~1e-7, faster on CPUs).
        tol: relative tolerance of the constant-layer test.

    Same protocol as ``MinibatchCKA``: ``update / compute / result / reset / merge / all_reduce``.
    Features are kept as "cat" states, so ``all_reduce`` gathers every rank's crops on every rank
    (in rank order: shard the crops contiguously for the same jackknife groups as one process).
    """

    def __init__(
        self,
        layers_a: Sequence[str],
        layers_b: Sequence[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        n_groups: int = N_GROUPS,
        gram_dtype: torch.dtype = torch.float64,
        tol: float = CONSTANT_TOL,
    ) -> None:
        super().__init__()
        self.layers_a = layer_list(layers_a, "layers_a", allow_empty=True)
        self.layers_b = layer_list(layers_b, "layers_b", allow_empty=True)
        if not (self.layers_a or self.layers_b):
            raise CkaLabError("layers_a and layers_b are both empty: give at least one layer name")
        if gram_dtype not in (torch.float32, torch.float64):
            raise CkaLabError(f"gram_dtype must be torch.float64 or torch.float32, got {gram_dtype}")
        if n_groups < 2:
            raise CkaLabError(f"n_groups must be at least 2 for a jackknife, got {n_groups}")
        self.max_bytes = int(max_bytes)
        self.n_groups = n_groups
        self.gram_dtype = gram_dtype
        self.tol = tol
        for i in range(len(self.layers_a)):
            self.add_state(f"features_a{i}", [], dist_reduce_fx="cat")  # (B, D) per batch
        for j in range(len(self.layers_b)):
            self.add_state(f"features_b{j}", [], dist_reduce_fx="cat")
        self.add_state("samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self._shape_compute()

    @property
    def n_samples(self) -> int:
        """Crops added so far."""
        return int(self.samples)

    def _lists(self, side: str) -> list[list[Tensor]]:
        count = len(self.layers_a if side == "a" else self.layers_b)
        return [getattr(self, f"features_{side}{i}") for i in range(count)]

    def kept_bytes(self) -> int:
        """Bytes of features kept now."""
        return sum(t.numel() * t.element_size() for side in "ab" for lst in self._lists(side) for t in lst)

    @torch.no_grad()
    def update(self, feats_a: Mapping[str, Tensor], feats_b: Mapping[str, Tensor]) -> None:
        """Keep one batch: feats_a / feats_b map every layer name to its (B, ...) features."""
        self._check_open()
        xa = [as_matrix(x).detach() for x in select_features(feats_a, self.layers_a, "a")]
        xb = [as_matrix(x).detach() for x in select_features(feats_b, self.layers_b, "b")]
        n = same_batch(self.layers_a, xa, self.layers_b, xb)
        adding = sum(x.numel() * x.element_size() for x in xa + xb)
        kept = self.kept_bytes()
        if kept + adding > self.max_bytes:
            raise CkaLabError(
                f"biased-full keeps every feature until compute(): {self.n_samples + n} crops of "
                f"{len(xa) + len(xb)} layers need {gib(kept + adding)}, over max_bytes={gib(self.max_bytes)}; "
                "raise max_bytes, use fewer crops or layers, or let cka_by_passes split the layers into passes"
            )
        self._follow((xa + xb)[0].device)
        for lst, x in zip(self._lists("a") + self._lists("b"), xa + xb):
            lst.append(x)
        self.samples = self.samples + n

    def grams(self) -> LayerGrams:
        """The (La + Lb, N, N) float64 centred Grams of the kept features (A's layers, then B's) and their spread."""
        if self.n_samples == 0:
            raise CkaLabError("no batch was added: call update() with the features of at least one batch")
        lists = self._lists("a") + self._lists("b")
        n = self.n_samples
        grams = torch.empty(len(lists), n, n, dtype=torch.float64, device=self.device)
        square = torch.empty(len(lists), dtype=torch.float64, device=self.device)
        centred = torch.empty_like(square)
        for i, chunks in enumerate(lists):
            grams[i], square[i], centred[i] = full_centred_gram(chunks, self.gram_dtype)
        return LayerGrams(grams, square, centred)

    def _result(self, level: float, intervals: bool) -> CKAResult:
        la = len(self.layers_a)
        spec = CKASpec(estimator="biased-full", n_groups=self.n_groups, level=level, tol=self.tol)
        return grams_result(self.grams(), self.layers_a + self.layers_b, range(la),
                            range(la, la + len(self.layers_b)), spec, intervals=intervals)

    def result(self, level: float = 0.95) -> CKAResult:
        """The biased CKA matrix with its delete-a-group jackknife interval and replicates."""
        return self._result(level, intervals=True)

    def compute(self) -> Tensor:
        """The CKA matrix: (La, Lb) float64 on the features' device; NaN cells for constant layers (warned)."""
        return torch.as_tensor(self._result(0.95, intervals=False).matrix, device=self.device)

    def __repr__(self) -> str:
        return f"FullBatchCKA({len(self.layers_a)}×{len(self.layers_b)} layers, {self.n_samples} samples)"
