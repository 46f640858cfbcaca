"""``MinibatchCKA``: the streaming unbiased-minibatch linear CKA (Nguyen, Raghu & Kornblith 2021).

For every HSIC *unit* of n >= 4 crops and every layer it forms one Gram matrix, U-centres it, and adds
the unbiased HSIC_1 (Song et al. 2012) of every layer pair to float64 sums; CKA is the ratio of the
sums (see ``cka_functional``). Memory is O(L·n²) per unit and O(La·Lb) in total.

Units and batches. By default (``unit_size=None``) each ``update`` batch is one unit, as in the paper.
With ``unit_size=u`` the crops are cut into units of u consecutive crops whatever the forward batch
size: a batch is split into several units, and crops left over (fewer than u) wait for the next
batch (at most u-1 crops per layer are buffered). Given the same crops in the same order, the result
and its interval are then the same for every batch size. At ``compute`` a trailing partial unit of
>= 4 crops counts as a (smaller) unit; fewer are dropped with a warning.

Intervals. With ``keep_batches=True`` each unit's HSIC terms are kept (U x (La·Lb + La + Lb) floats):
``result()`` gives a delete-one-unit jackknife interval (order-free, no seed), and
``confidence_interval`` a percentile bootstrap over units.

Constant layers. Per unit the accumulator also sums each layer's ``Σ||x_i||²`` and
``Σ||x_i - mean_unit||²``; a layer with ``centred <= tol · raw`` (or a non-positive HSIC self term)
is constant: its cells are NaN, a warning names it, and ``result()`` lists it. This catches a
constant output with a bias (0.5 + rounding noise), whose CKA would otherwise be computed from noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka.functional import (
    CONSTANT_TOL,
    MIN_BATCH,
    as_matrix,
    is_constant,
    u_centred_grams_and_spread,
)
from cka_lab.metrics.cka.inputs import layer_list, same_batch, select_features
from cka_lab.metrics.cka.protocol import CKAAccumulator
from cka_lab.metrics.cka.result import CKAResult, jackknife_interval

__all__ = ["MinibatchCKA", "minibatch_cka"]


def cka_ratio(ab: Tensor, aa: Tensor, bb: Tensor, dead_a: Tensor | None = None, dead_b: Tensor | None = None) -> Tensor:
    """(..., La, Lb), (..., La), (..., Lb) HSIC sums -> (..., La, Lb) CKA; NaN where undefined or dead."""
    denom = (aa.unsqueeze(-1) * bb.unsqueeze(-2)).sqrt()
    ok = denom > 0
    if dead_a is not None:
        ok = ok & ~dead_a.unsqueeze(-1) & ~dead_b.unsqueeze(-2)
    return torch.where(ok, ab / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(ab, math.nan))


class MinibatchCKA(CKAAccumulator):
    """Streaming minibatch linear CKA between layers of two models (Nguyen et al. 2021).

    Args:
        layers_a: La layer names of model A (keys of ``feats_a`` in ``update``).
        layers_b: Lb layer names of model B.
        keep_batches: keep each unit's HSIC values for intervals (``result``, ``confidence_interval``).
        gram_dtype: dtype of the Gram products (default: float32, or float64 for float64 features);
            U-centring and sums are always float64.
        unit_size: crops per HSIC unit (>= 4), independent of the forward batch size; None: each
            ``update`` batch is one unit.
        tol: relative tolerance of the constant-layer test (see the module doc).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cka_lab.features import FeatureExtractor
        >>> _ = torch.manual_seed(0)
        >>> model_a = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        >>> model_b = nn.Sequential(nn.Linear(8, 6), nn.Tanh())
        >>> loader = torch.randn(4, 16, 8)  # 4 batches of 16 inputs (B, 8)
        >>> metric = MinibatchCKA(["0", "2"], ["0"], keep_batches=True, unit_size=8)
        >>> with FeatureExtractor(model_a, ["0", "2"]) as ext_a, FeatureExtractor(model_b, "0") as ext_b:
        ...     for x in loader:
        ...         _ = model_a(x), model_b(x)
        ...         metric.update(ext_a.features, ext_b.features)
        >>> result = metric.result()
        >>> result.matrix.shape, result.lower.shape  # (La, Lb) float64 numpy, with .lower / .upper
        ((2, 1), (2, 1))

    Units are weighted equally, whatever their size (each HSIC_1 is an unbiased estimate). The state
    follows the features' device; each unit makes one small device-to-host copy (NaN and precision
    flags). ``n_batches`` is the number of units (= updates when ``unit_size`` is None).
    """

    def __init__(
        self,
        layers_a: Sequence[str],
        layers_b: Sequence[str],
        *,
        keep_batches: bool = False,
        gram_dtype: torch.dtype | None = None,
        unit_size: int | None = None,
        tol: float = CONSTANT_TOL,
    ) -> None:
        super().__init__()
        self.layers_a = layer_list(layers_a, "layers_a")
        self.layers_b = layer_list(layers_b, "layers_b")
        self.keep_batches = keep_batches
        if gram_dtype not in (None, torch.float32, torch.float64):
            raise CkaLabError(f"gram_dtype must be torch.float32, torch.float64 or None, got {gram_dtype}")
        if unit_size is not None and (isinstance(unit_size, bool) or not isinstance(unit_size, int) or unit_size < MIN_BATCH):
            raise CkaLabError(f"unit_size must be an integer >= {MIN_BATCH} (the unbiased HSIC needs 4 crops), got {unit_size!r}")
        self.gram_dtype = gram_dtype
        self.unit_size = unit_size
        self.tol = tol
        la, lb = len(self.layers_a), len(self.layers_b)
        f64 = torch.float64
        self.add_state("hsic_ab", torch.zeros(la, lb, dtype=f64), dist_reduce_fx="sum")  # Σ_u HSIC(K_i, L_j)
        self.add_state("hsic_aa", torch.zeros(la, dtype=f64), dist_reduce_fx="sum")  # Σ_u HSIC(K_i, K_i)
        self.add_state("hsic_bb", torch.zeros(lb, dtype=f64), dist_reduce_fx="sum")  # Σ_u HSIC(L_j, L_j)
        self.add_state("square_a", torch.zeros(la, dtype=f64), dist_reduce_fx="sum")  # Σ ||x||²
        self.add_state("square_b", torch.zeros(lb, dtype=f64), dist_reduce_fx="sum")
        self.add_state("centred_a", torch.zeros(la, dtype=f64), dist_reduce_fx="sum")  # Σ ||x - mean_unit||²
        self.add_state("centred_b", torch.zeros(lb, dtype=f64), dist_reduce_fx="sum")
        self.add_state("units", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unit_values", [], dist_reduce_fx="cat")  # per unit (1, La·Lb + La + Lb)
        self.centred_layers: set[str] = set()  # layers whose features are centred before the Gram
        self._clear_pending()
        self._shape_compute()

    # ---- state --------------------------------------------------------------------------------

    @property
    def n_units(self) -> int:
        """HSIC units added so far."""
        return int(self.units)

    @property
    def n_batches(self) -> int:
        """The number of HSIC units (the name of the per-batch estimator)."""
        return int(self.units)

    @property
    def n_samples(self) -> int:
        """Crops in the units added so far (crops waiting for a full unit are not counted)."""
        return int(self.samples)

    def _clear_pending(self) -> None:
        self._pending: list[list[Tensor]] = []  # per distinct tensor: chunks (b, D) of the open unit
        self._pending_map: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._pending_labels: list[str] = []
        self._pending_n = 0

    def reset(self) -> None:
        """Forget every batch."""
        super().reset()
        self.centred_layers = set()
        self._clear_pending()

    def _check_merge(self, other: CKAAccumulator) -> None:
        if other.keep_batches != self.keep_batches:
            raise CkaLabError("merge needs the same keep_batches setting on both MinibatchCKA")
        if other.unit_size != self.unit_size:
            raise CkaLabError("merge needs the same unit_size on both MinibatchCKA")

    def _merged(self, other: CKAAccumulator) -> None:
        self.centred_layers |= other.centred_layers

    # ---- adding crops -------------------------------------------------------------------------

    def _distinct(self, xa: list[Tensor], xb: list[Tensor]) -> tuple[list[Tensor], list[str], tuple[int, ...], tuple[int, ...]]:
        """One entry per distinct tensor (comparing a model with itself shares the Grams)."""
        slot: dict[int, int] = {}
        unique: list[Tensor] = []
        labels: list[str] = []
        sides = [f"{name!r} (model A)" for name in self.layers_a] + [f"{name!r} (model B)" for name in self.layers_b]
        for label, x in zip(sides, xa + xb):
            if id(x) not in slot:
                slot[id(x)] = len(unique)
                unique.append(as_matrix(x))
                labels.append(label)
        return unique, labels, tuple(slot[id(x)] for x in xa), tuple(slot[id(x)] for x in xb)

    @torch.no_grad()
    def update(self, feats_a: Mapping[str, Tensor], feats_b: Mapping[str, Tensor]) -> None:
        """Add one batch.

        Args:
            feats_a: layer name -> (B, ...) features of model A, for every name in ``layers_a``.
            feats_b: layer name -> (B, ...) features of model B for the same B samples.
        """
        self._check_open()
        xa = select_features(feats_a, self.layers_a, "a")
        xb = select_features(feats_b, self.layers_b, "b")
        n = same_batch(self.layers_a, xa, self.layers_b, xb)
        unique, labels, ia, ib = self._distinct(xa, xb)
        if self.unit_size is None:
            if n < MIN_BATCH:
                raise CkaLabError(
                    f"a batch of {n} samples is too small: the unbiased HSIC needs at least {MIN_BATCH}; "
                    "use larger batches (or drop_last=True for a small last batch), or set unit_size"
                )
            self._add_unit(unique, labels, ia, ib)
            return
        size, start = self.unit_size, 0
        if self._pending_n:
            if self._pending_map != (ia, ib):
                raise CkaLabError(
                    "the layers that models A and B share changed in the middle of a unit; pass the same "
                    "feature mappings in every update (or unit_size=None)"
                )
            start = min(size - self._pending_n, n)
            for chunks, x in zip(self._pending, unique):
                chunks.append(x[:start].clone())
            self._pending_n += start
            if self._pending_n == size:
                self._add_unit([torch.cat(c) for c in self._pending], labels, ia, ib)
                self._clear_pending()
        while start + size <= n:
            self._add_unit([x[start : start + size] for x in unique], labels, ia, ib)
            start += size
        if start < n:
            self._pending = [[x[start:].clone()] for x in unique]
            self._pending_map, self._pending_labels, self._pending_n = (ia, ib), labels, n - start

    def _flush(self) -> None:
        """Close a trailing partial unit: a unit of its own if it has >= 4 crops, else dropped (warned)."""
        if not self._pending_n:
            return
        n, (ia, ib) = self._pending_n, self._pending_map
        if n >= MIN_BATCH:
            self._add_unit([torch.cat(c) for c in self._pending], self._pending_labels, ia, ib)
        else:
            warnings.warn(
                f"MinibatchCKA: the last {n} crops do not fill a unit of at least {MIN_BATCH} and are left out; "
                f"use a number of crops that is a multiple of unit_size={self.unit_size}",
                stacklevel=3,
            )
        self._clear_pending()

    def _add_unit(self, xs: list[Tensor], labels: list[str], ia: tuple[int, ...], ib: tuple[int, ...]) -> None:
        """Add one unit: xs (n, D_k) distinct tensors, ia/ib the slot of each layer of A and B."""
        n = xs[0].shape[0]
        u, square, centred = u_centred_grams_and_spread(xs, labels, self.gram_dtype, self.centred_layers)
        inner = (u @ u.T) / (n * (n - 3))  # (Lu, Lu): every HSIC_1 of the unit
        self_terms = inner.diagonal()
        sa = torch.tensor(ia, device=inner.device)
        sb = torch.tensor(ib, device=inner.device)
        ab, aa, bb = inner[sa][:, sb], self_terms[sa], self_terms[sb]
        self._follow(inner.device)
        # out of place: the state may be created inside torch.inference_mode()
        self.hsic_ab = self.hsic_ab + ab
        self.hsic_aa = self.hsic_aa + aa
        self.hsic_bb = self.hsic_bb + bb
        self.square_a = self.square_a + square[sa]
        self.square_b = self.square_b + square[sb]
        self.centred_a = self.centred_a + centred[sa]
        self.centred_b = self.centred_b + centred[sb]
        self.units = self.units + 1
        self.samples = self.samples + n
        if self.keep_batches:
            self.unit_values.append(torch.cat([ab.flatten(), aa, bb]).unsqueeze(0))

    # ---- results ------------------------------------------------------------------------------

    def constant_layers(self) -> tuple[list[str], list[str]]:
        """Names of the layers of A and of B without spread over the units (see the module doc)."""
        dead_a, dead_b = self._dead()
        return (
            [n for n, d in zip(self.layers_a, dead_a.tolist()) if d],
            [n for n, d in zip(self.layers_b, dead_b.tolist()) if d],
        )

    def _dead(self) -> tuple[Tensor, Tensor]:
        dead_a = is_constant(self.square_a, self.centred_a, self.tol) | (self.hsic_aa <= 0)
        dead_b = is_constant(self.square_b, self.centred_b, self.tol) | (self.hsic_bb <= 0)
        return dead_a, dead_b

    def compute(self) -> Tensor:
        """The CKA matrix: (La, Lb) float64, on the device of the features (CPU before any update).

        Cells of a constant layer are NaN, with a warning naming it.
        """
        self._flush()
        if self.n_units == 0:
            raise CkaLabError("no batch was added: call update() with the features of at least one batch")
        const_a, const_b = self.constant_layers()
        dead = const_a + [n for n in const_b if n not in const_a]
        if dead:
            warnings.warn(
                f"layer {', '.join(repr(d) for d in dead)} has constant features over all {self.n_samples} samples "
                f"(centred variance <= {self.tol:g} x its mean square); its CKA is undefined and set to NaN",
                stacklevel=3,
            )
        return cka_ratio(self.hsic_ab, self.hsic_aa, self.hsic_bb, *self._dead())

    def _unit_rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-unit HSIC terms as CPU tensors (U, La, Lb), (U, La), (U, Lb)."""
        if not self.keep_batches:
            raise CkaLabError("intervals need the per-unit values: create MinibatchCKA(..., keep_batches=True)")
        la, lb = len(self.layers_a), len(self.layers_b)
        rows = [t.reshape(-1, la * lb + la + lb) for t in self.unit_values]
        rows = torch.cat(rows).cpu() if rows else torch.zeros(0, la * lb + la + lb, dtype=torch.float64)
        return rows[:, : la * lb].reshape(-1, la, lb), rows[:, la * lb : la * lb + la], rows[:, la * lb + la :]

    def jackknife(self) -> tuple[Tensor, Tensor]:
        """Delete-one-unit jackknife replicates.

        Returns:
            (estimate, replicates): (La, Lb) and (U, La, Lb) float64 CPU tensors, replicate u the CKA of
            all units but u; NaN for constant layers.
        """
        self._flush()
        ab, aa, bb = self._unit_rows()
        dead_a, dead_b = (d.cpu() for d in self._dead())
        sab, saa, sbb = self.hsic_ab.cpu(), self.hsic_aa.cpu(), self.hsic_bb.cpu()
        estimate = cka_ratio(sab, saa, sbb, dead_a, dead_b)
        return estimate, cka_ratio(sab - ab, saa - aa, sbb - bb, dead_a, dead_b)

    def result(self, level: float = 0.95) -> CKAResult:
        """The CKA matrix with a delete-one-unit jackknife interval and its replicates (needs keep_batches
        and >= 2 units for them)."""
        matrix = self.compute().cpu()
        lower = upper = bias = replicates = None
        n_units = self.n_units
        interval = "none (needs keep_batches=True and at least 2 units)"
        if self.keep_batches and n_units >= 2:
            estimate, replicates_t = self.jackknife()
            low, high, bias_t = jackknife_interval(estimate, replicates_t, level)
            lower, upper, bias, replicates = low.numpy(), high.numpy(), bias_t.numpy(), replicates_t.numpy()
            interval = f"delete-one-unit bias-corrected jackknife over {n_units} units, Student t with {n_units - 1} df"
        const_a, const_b = self.constant_layers()
        size = self.unit_size or round(self.n_samples / max(n_units, 1))
        unit = f"HSIC unit of {size} crops" if self.unit_size else "HSIC unit = one update batch"
        return CKAResult(
            matrix=matrix.numpy().astype(np.float64),
            estimator="unbiased-minibatch",
            n_samples=self.n_samples,
            layers_a=tuple(self.layers_a),
            layers_b=tuple(self.layers_b),
            lower=lower,
            upper=upper,
            level=level,
            unit=unit,
            unit_size=size,
            n_units=n_units,
            interval=interval,
            constant_a=tuple(const_a),
            constant_b=tuple(const_b),
            bias=bias,
            replicates=replicates,
        )

    def confidence_interval(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Percentile bootstrap over units (needs ``keep_batches=True`` and >= 2 units).

        Each replicate draws n_units units with replacement and recomputes the ratio of sums.

        Returns:
            (low, high): two (La, Lb) float64 CPU tensors, the (1-level)/2 and (1+level)/2 quantiles.
        """
        self._flush()
        ab, aa, bb = self._unit_rows()
        n_b = ab.shape[0]
        if n_b < 2:
            raise CkaLabError(f"a bootstrap over units needs at least 2 units, got {n_b}")
        if not 0 < level < 1:
            raise CkaLabError(f"level must be in (0, 1), got {level}")
        gen = torch.Generator().manual_seed(seed)
        draws = torch.randint(n_b, (n_boot, n_b), generator=gen)
        counts = torch.zeros(n_boot, n_b, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(n_boot, n_b, dtype=torch.float64)
        )  # (n_boot, n_b)
        la, lb = ab.shape[1:]
        dead_a, dead_b = (d.cpu() for d in self._dead())
        boot = cka_ratio(
            (counts @ ab.reshape(n_b, -1)).reshape(n_boot, la, lb), counts @ aa, counts @ bb, dead_a, dead_b
        )  # (n_boot, La, Lb)
        alpha = (1 - level) / 2
        q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
        low, high = torch.nanquantile(boot, q, dim=0)
        return low, high

    def __repr__(self) -> str:
        return (
            f"MinibatchCKA({len(self.layers_a)}×{len(self.layers_b)} layers, "
            f"{self.n_units} units, {self.n_samples} samples)"
        )


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
