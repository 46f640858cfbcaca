"""Features: forward hooks on named modules, flattened to (B, D) for the metrics."""

from cka_lab.features.extractor import FeatureExtractor, list_layers, resolve_layers

__all__ = ["FeatureExtractor", "list_layers", "resolve_layers"]
