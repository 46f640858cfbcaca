"""Layer-by-layer CKA between two models on the same probe crops (the engine of ``cka-lab compare``).

A comparison is a contrast (:func:`~cka_lab.analysis.contrast.contrast_models`) without attention and
without controls: its map across the two models. Both models see the same clean crops (each at its own
probe size, see :func:`cka_lab.analysis.probing.prepare_probe`); each model's task decides what it is fed
(SR heads: the crop, denoising heads: the crop plus per-crop seeded noise, derain heads: the crop as
is). What is measured -- layers, feature kind, estimator -- is one
:class:`~cka_lab.analysis.spec.AnalysisSpec`; how the pair is run (names, tasks, crops, device) one
:class:`~cka_lab.analysis.contrast.ContrastOptions` (or its fields as keywords).

    comp = compare_models(a, b, AnalysisSpec(layers="paper", estimator="biased-full"))
    comp.matrix, comp.ci_low, comp.ci_high, comp.protocol
"""

from __future__ import annotations

from torch import nn

from cka_lab.features.layersets import DEFAULT_PATTERN
from cka_lab.models.names import short_layer_name, stage_starts

from .comparison import Comparison, probed_patch
from .contrast import ContrastOptions, contrast_models
from .probing import default_probe_images, model_input, probe_loader, progress_enabled
from .spec import AnalysisSpec

__all__ = [
    "Comparison",
    "compare_models",
    "probed_patch",
    "stage_starts",
    "default_probe_images",
    "model_input",
    "probe_loader",
    "progress_enabled",
    "short_layer_name",
]

DEFAULT_LAYERS = DEFAULT_PATTERN


def compare_models(model_a: nn.Module, model_b: nn.Module, spec: AnalysisSpec | None = None,
                   options: ContrastOptions | None = None, **option_fields) -> Comparison:
    """CKA between every layer of ``model_a`` and every layer of ``model_b`` (``spec.layers`` of each).

    ``spec`` (default :class:`AnalysisSpec()`) decides probe crops, layers, features and estimator
    (its attention and controls are not used); ``options`` or its fields as keywords (``batches``,
    ``task_a``, ``task_b``, ``name_a``, ``name_b``, ``device``, ``progress``) how the pair runs: the
    :attr:`~cka_lab.analysis.contrast.Contrast.cross` map of :func:`contrast_models` with attention and
    controls off. The models run in eval mode on ``device``; hooks are removed when the call ends, also
    on error.
    """
    spec = (spec or AnalysisSpec()).replace(attention=False, controls=False)
    return contrast_models(model_a, model_b, spec, ContrastOptions.of(options, option_fields, "compare_models")).cross
