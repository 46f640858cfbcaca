"""Features: forward hooks on named modules, flattened to (B, D) for the metrics; named layer sets; one tap on
the softmax of every attention module (logits, probabilities, window)."""

from cka_lab.features.attention import AttentionMap, AttentionTap, attention_modules
from cka_lab.features.extractor import FeatureExtractor, list_layers, resolve_layers
from cka_lab.features.layersets import LAYER_SETS, layer_set, paper_layers, resolve_layer_spec

__all__ = ["AttentionMap", "AttentionTap", "FeatureExtractor", "attention_modules", "LAYER_SETS", "layer_set", "list_layers", "paper_layers", "resolve_layer_spec",
           "resolve_layers"]
