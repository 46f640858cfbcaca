"""What an analysis measures, in one place: :class:`AnalysisSpec` (probe, layers, features, estimator,
attention, controls), validated on creation with one-line errors.

    spec = AnalysisSpec(probe=ProbeSpec(n_samples=256), layers="paper", estimator="biased-full")
    spec.features          # "output": the paper set's default feature kind
    spec.protocol          # "biased-full CKA, layers paper, output features" (every output names it)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path

from cka_lab.errors import CkaLabError
from cka_lab.features.extractor import FEATURE_KINDS
from cka_lab.features.layersets import LAYER_SETS, default_feature_kind

from .estimators import ESTIMATORS

__all__ = ["AnalysisSpec", "ProbeSpec", "ESTIMATORS", "check_choice"]


def check_choice(what: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a one-line error with the closest choice."""
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CkaLabError(f"unknown {what} {value!r}: {hint}use one of {', '.join(choices)}")


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CkaLabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ProbeSpec:
    """The probe crops: where from, how many, how big, which seed, in which batches.

    ``patch=None`` probes each model at its training size for its task (the config's ``image_size``
    at the body: 48 px for EDT-T SR, 192 px for its downsampling denoise/derain heads); an int probes
    both models at that size. ``batch_size`` is only the forward batch: the probe inputs (crops and
    per-crop noise) do not depend on it.
    """

    data: str | Path | None = None
    patch: int | None = None
    n_samples: int = 128
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.patch is not None:
            _positive("patch", self.patch)
        _positive("n_samples", self.n_samples)
        _positive("seed", self.seed, 0)
        _positive("batch_size", self.batch_size)

    @property
    def data_label(self) -> str:
        from .probing import PROBE_LABEL

        return PROBE_LABEL if self.data is None else str(self.data)


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: probe crops, layers, feature kind, CKA estimator, attention, controls.

    Attributes:
        probe: the probe crops (:class:`ProbeSpec`).
        layers: ``"default"`` (every transformer block), ``"paper"`` (the EDT authors' set, see
            :mod:`cka_lab.features.layersets`) or module names / glob patterns (a tuple, or one string).
        features: ``"update"`` (output minus input) or ``"output"``; None picks the layer set's default
            (``output`` for ``paper``, ``update`` otherwise).
        estimator: ``"unbiased-minibatch"`` (Nguyen et al. 2021, streaming) or ``"biased-full"`` (the
            exact full-batch linear CKA of Kornblith et al. 2019, as the EDT authors computed it).
        attention: also measure attention statistics (EDT models only).
        controls: compute the probe-draw control (and the seed-to-seed one where it applies).
        unit_size: crops per resampling unit of the confidence intervals (None: the estimator's default).
        confidence: level of the intervals.
        max_bytes: memory budget of biased-full (features kept + N x N Grams; None: the metrics
            package's 4 GiB). A larger budget means fewer passes over the crops.
        min_effect: smallest |difference of CKA| a contrast ever states (default 0.01,
            :data:`~cka_lab.analysis.controls.MIN_EFFECT`; ``--min-effect``).
    """

    probe: ProbeSpec = field(default_factory=ProbeSpec)
    layers: str | tuple[str, ...] = "default"
    features: str | None = None
    estimator: str = "unbiased-minibatch"
    attention: bool = True
    controls: bool = True
    unit_size: int | None = None
    confidence: float = 0.95
    max_bytes: int | None = None
    min_effect: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.probe, ProbeSpec):
            raise CkaLabError(f"probe must be a ProbeSpec, got {type(self.probe).__name__}")
        check_choice("estimator", self.estimator, ESTIMATORS)
        layers = self.layers
        if isinstance(layers, (list, tuple)):
            if not layers or not all(isinstance(x, str) and x for x in layers):
                raise CkaLabError("layers must name at least one module (or be 'default' or 'paper')")
            object.__setattr__(self, "layers", tuple(layers))
        elif not isinstance(layers, str) or not layers:
            raise CkaLabError(f"layers must be 'default', 'paper', a pattern or a list of names; got {layers!r}")
        kind = self.features if self.features is not None else default_feature_kind(self.layers)
        check_choice("feature kind", kind, FEATURE_KINDS)
        if self.layers == "paper" and kind == "update":
            raise CkaLabError(
                "--layers paper takes output features (the authors' protocol): 'update' is undefined for its "
                "identity taps and its head/tail blocks; drop --features update or use --layers default"
            )
        object.__setattr__(self, "features", kind)
        if self.unit_size is not None:
            _positive("unit_size", self.unit_size)
        if self.max_bytes is not None:
            _positive("max_bytes", self.max_bytes)
        if not 0 < self.confidence < 1:
            raise CkaLabError(f"confidence must be in (0, 1), got {self.confidence}")
        if isinstance(self.min_effect, bool) or not isinstance(self.min_effect, (int, float)) \
                or not 0 <= self.min_effect < 1:
            raise CkaLabError(f"min_effect (--min-effect) must be a number in [0, 1), got {self.min_effect!r}")

    @property
    def layer_set(self) -> str:
        """``default``, ``paper`` or ``custom`` (names or patterns), for labels."""
        return self.layers if self.layers in LAYER_SETS else "custom"

    @property
    def layer_label(self) -> str:
        if self.layers in LAYER_SETS:
            return str(self.layers)
        text = self.layers if isinstance(self.layers, str) else ",".join(self.layers)
        return text if len(text) <= 60 else text[:57] + "..."

    @property
    def protocol(self) -> str:
        """``<estimator> CKA, layers <set>, <kind> features`` -- add N with :meth:`label`."""
        return f"{self.estimator} CKA, layers {self.layer_label}, {self.features} features"

    def label(self, n_samples: int | None = None) -> str:
        """The protocol and N, as every table, figure title and page names it."""
        return f"{self.protocol}, N={self.probe.n_samples if n_samples is None else n_samples}"

    def record(self) -> dict:
        """The spec as plain JSON types (for summary files)."""
        return {
            "estimator": self.estimator,
            "layer_set": self.layer_set,
            "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
            "features": self.features,
            "n_samples": self.probe.n_samples,
            "patch": self.probe.patch,
            "seed": self.probe.seed,
            "batch_size": self.probe.batch_size,
            "data": self.probe.data_label,
            "unit_size": self.unit_size,
            "confidence": self.confidence,
            "min_effect": self.min_effect,
        }

    def replace(self, **changes) -> AnalysisSpec:
        """A copy with some fields changed (``probe`` fields too: ``n_samples=``, ``seed=``, ...)."""
        probe_fields = {k: changes.pop(k) for k in list(changes) if k in ProbeSpec.__dataclass_fields__}
        probe = replace(self.probe, **probe_fields) if probe_fields else self.probe
        if "layers" in changes and "features" not in changes:
            changes["features"] = None
        return replace(self, probe=probe, **changes)
