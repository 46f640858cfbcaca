"""Checks of what the CKA accumulators are given: layer lists and per-batch feature mappings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from cka_lab.errors import CkaLabError

__all__ = ["layer_list", "select_features", "same_batch"]


def layer_list(layers: Sequence[str], what: str, *, allow_empty: bool = False) -> list[str]:
    """``layers`` as a list of distinct names (one-line CkaLabError for a string, an empty list, a repeat)."""
    if isinstance(layers, str):
        raise CkaLabError(f"{what} must be a list of layer names, not the string {layers!r}")
    out = list(layers)
    if not out and not allow_empty:
        raise CkaLabError(f"{what} is empty: give at least one layer name")
    if len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        raise CkaLabError(f"{what} names a layer twice ({', '.join(dup)}); give each layer once")
    return out


def select_features(feats: Mapping[str, Tensor], layers: list[str], side: str) -> list[Tensor]:
    """The tensors of ``layers`` from ``feats`` in order, each (B, ...); a one-line error for a missing one."""
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


def same_batch(layers_a: list[str], xa: list[Tensor], layers_b: list[str], xb: list[Tensor]) -> int:
    """The common batch size B of every tensor; a one-line error naming the first that differs."""
    first_name, first = (layers_a[0], xa[0]) if xa else (layers_b[0], xb[0])
    n = first.shape[0]
    for side, names, xs in (("A", layers_a, xa), ("B", layers_b, xb)):
        for name, x in zip(names, xs):
            if x.shape[0] != n:
                raise CkaLabError(
                    f"batch size mismatch: layer {first_name!r} has {n} samples but layer {name!r} of "
                    f"model {side} has {x.shape[0]}; feed the same batch to both"
                )
    return n
