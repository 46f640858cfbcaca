"""Linear CKA: the public face of ``cka_lab.metrics`` for CKA (everything importable from here).

Estimators (``ESTIMATORS``):

* ``"unbiased-minibatch"`` -- ``MinibatchCKA`` (Nguyen, Raghu & Kornblith 2021): sums of the unbiased
  HSIC_1 of Song et al. (2012) over units of crops; memory independent of N. ``unit_size`` decouples
  the HSIC unit from the forward batch size. Module ``cka_minibatch``.
* ``"biased-full"`` -- ``FullBatchCKA`` (Kornblith et al. 2019): the exact biased HSIC of all N crops,
  float64, the EDT authors' Fig. 2 estimator. Module ``cka_full``.

``cka_by_passes(layers_a, layers_b, run, CKASpec(estimator=...), n_samples=, feature_numel=)`` -- the one
driver, which the analysis uses -- runs either one over the probe crops, in as many passes (layer groups)
as biased-full's memory budget needs, and returns a ``CKAResult`` (matrix, jackknife interval and
replicates, constant layers, provenance: estimator, n_samples, unit; optionally the two half-draw
maps). Module ``cka_passes``.

Both accumulators are ``torchmetrics.Metric`` s with ``update / compute / result / reset / merge /
all_reduce`` (``cka_protocol``). Constant layers (centred variance <= ``CONSTANT_TOL`` x mean square)
give NaN cells and a warning naming them. The functional core (Grams, the oneDNN kernel, centring,
HSIC, ``linear_cka``) is ``cka_functional``.
"""

from cka_lab.metrics.cka.full import (
    DEFAULT_MAX_BYTES,
    FullBatchCKA,
    LayerGrams,
    cka_ratio,
    deleted_group_inner,
    deleted_group_unbiased,
    deleted_group_unbiased_self,
    grams_result,
    group_bounds,
    half_maps,
)
from cka_lab.metrics.cka.functional import (
    CONSTANT_TOL,
    MIN_BATCH,
    PRECISION_LIMIT,
    as_matrix,
    centred_gram,
    double_centre,
    full_centred_gram,
    gram,
    gram_dtype_for,
    is_constant,
    linear_cka,
    squared_norm,
    u_centre,
    u_centred_grams_and_spread,
    unbiased_hsic,
    x_xt,
)
from cka_lab.metrics.cka.minibatch import MinibatchCKA, minibatch_cka
from cka_lab.metrics.cka.passes import DEFAULT_UNIT_SIZE, RunPass, cka_by_passes, feature_room, plan_passes
from cka_lab.metrics.cka.protocol import CKAAccumulator
from cka_lab.metrics.cka.result import ESTIMATORS, CKAResult, check_estimator, jackknife_interval, jackknife_p_value
from cka_lab.metrics.cka.spec import N_GROUPS, CKASpec

__all__ = [
    "CONSTANT_TOL",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_UNIT_SIZE",
    "ESTIMATORS",
    "MIN_BATCH",
    "PRECISION_LIMIT",
    "CKAAccumulator",
    "CKAResult",
    "FullBatchCKA",
    "LayerGrams",
    "MinibatchCKA",
    "RunPass",
    "as_matrix",
    "CKASpec",
    "N_GROUPS",
    "centred_gram",
    "check_estimator",
    "cka_by_passes",
    "cka_ratio",
    "deleted_group_inner",
    "deleted_group_unbiased",
    "deleted_group_unbiased_self",
    "double_centre",
    "feature_room",
    "full_centred_gram",
    "gram",
    "gram_dtype_for",
    "grams_result",
    "group_bounds",
    "half_maps",
    "is_constant",
    "jackknife_interval",
    "jackknife_p_value",
    "linear_cka",
    "minibatch_cka",
    "plan_passes",
    "squared_norm",
    "u_centre",
    "u_centred_grams_and_spread",
    "unbiased_hsic",
    "x_xt",
]
