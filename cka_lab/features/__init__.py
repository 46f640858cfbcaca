"""Features: forward hooks on named modules, flattened to (B, D) for the metrics; named layer sets."""

from cka_lab.features.extractor import FeatureExtractor, list_layers, resolve_layers
from cka_lab.features.layersets import LAYER_SETS, layer_set, paper_layers, resolve_layer_spec

__all__ = ["FeatureExtractor", "LAYER_SETS", "layer_set", "list_layers", "paper_layers", "resolve_layer_spec",
           "resolve_layers"]
