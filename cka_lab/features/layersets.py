"""Named layer sets: ``"default"`` (cka_lab's) and ``"paper"`` (the EDT authors' Fig. 2 protocol).

* ``default`` -- every transformer block ``body.layers.i.residual_group.blocks.j``, in depth order.
  With ``update`` features (block output minus block input) this is cka_lab's default analysis.
* ``paper`` -- the layers the EDT authors used for their CKA figure (official repository, issue #4,
  answered by the first author): the convolutional head of the probed task (``head_<task>.0``, each
  ``ResBlockDown``, the last conv), then per stage ``i`` and block ``j`` the state after the attention
  residual (``...blocks.j.attn_residual``, an identity tap) and after the FFN residual (the block output
  ``...blocks.j``), then the stage output after its global residual (``body.layers.i``), then the tail
  blocks of the task (``tail_<task>.k``; an ``nn.Identity`` placeholder of the one-step upsampler is
  skipped: its output is the upsampler's). For EDT-T (4 stages of 6 blocks, head/tail depth 2) that is
  4 + 4 x (6 x 2 + 1) + 3 = 59 layers for SR x2 with the official upsampler and for denoising, and 60
  for SR x2 with the ``pixelshuffle`` upsampler (one tail block more), which every study model uses.

  Choices of ours where the authors' description is silent: ``body.norm`` (the LayerNorm after the last
  stage) and ``body.conv_after_body`` (the conv before the body's global residual) are left out -- the
  description names neither; add them by name (``--layers``) to include them.

  The authors compared raw outputs, without normalisation, so the ``paper`` set takes ``output``
  features; ``update`` features (output minus input) are refused for it: the identity taps would give
  zero updates and the head and tail blocks change shape.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from cka_lab.errors import CkaLabError
from cka_lab.models.names import BLOCK_PATTERN, STAGE

from .extractor import resolve_layers

__all__ = ["LAYER_SETS", "DEFAULT_PATTERN", "default_feature_kind", "is_layer_set", "layer_set", "paper_layers",
           "resolve_layer_spec"]

LAYER_SETS = ("default", "paper")
DEFAULT_PATTERN = BLOCK_PATTERN
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def default_feature_kind(layers: str | Sequence[str] | None) -> str:
    """``output`` for the paper set (the authors' protocol), ``update`` for everything else."""
    return "output" if layers == "paper" else "update"


def is_layer_set(layers: object) -> bool:
    return isinstance(layers, str) and layers in LAYER_SETS


def _check_name(layers: str) -> None:
    """A bare word that is no layer set but close to one: an unknown layer set, with the close match."""
    if _IDENT.fullmatch(layers) and layers not in LAYER_SETS:
        close = difflib.get_close_matches(layers, LAYER_SETS, n=1, cutoff=0.6)
        if close:
            raise CkaLabError(f"unknown layer set {layers!r}: did you mean {close[0]!r}? (layer sets: "
                              f"{', '.join(LAYER_SETS)}, or module names / glob patterns)")


def _task_suffix(model: nn.Module, task: str | None) -> str:
    cfg = model.config
    return cfg.head(task or cfg.tasks[0]).suffix


def paper_layers(model: nn.Module, task: str | None = None) -> list[str]:
    """The EDT authors' CKA layers of ``model`` for the head of ``task`` (see the module docstring)."""
    modules = dict(model.named_modules())
    stages = sorted(int(m.group(1)) for n in modules if (m := STAGE.match(n)))
    if getattr(model, "config", None) is None or not stages or not any(n.endswith(".attn_residual") for n in modules):
        raise CkaLabError(
            f"--layers paper needs an EDT model (head_<task>, body.layers.i.residual_group.blocks.j.attn_residual); "
            f"{type(model).__name__} has no EDT blocks: name its layers with --layers instead"
        )
    suffix = _task_suffix(model, task)
    head = modules[f"head_{suffix}"]
    tail = modules[f"tail_{suffix}"]
    out = [f"head_{suffix}.{k}" for k in range(len(head))]
    for i in stages:
        blocks = modules[f"body.layers.{i}.residual_group.blocks"]
        for j in range(len(blocks)):
            block = f"body.layers.{i}.residual_group.blocks.{j}"
            out += [f"{block}.attn_residual", block]
        out.append(f"body.layers.{i}")
    out += [f"tail_{suffix}.{k}" for k, m in enumerate(tail) if not isinstance(m, nn.Identity)]
    return out


def layer_set(model: nn.Module, name: str, task: str | None = None) -> list[str]:
    """The layers of a named set (``default`` or ``paper``) in ``model``."""
    if name == "paper":
        return paper_layers(model, task)
    if name == "default":
        return resolve_layers(model, DEFAULT_PATTERN)
    _check_name(name)
    raise CkaLabError(f"unknown layer set {name!r}: use one of {', '.join(LAYER_SETS)}")


def resolve_layer_spec(model: nn.Module, layers: str | Sequence[str] | None, task: str | None = None) -> list[str]:
    """A layer set name, module names or glob patterns (None: ``default``) -> module names of ``model``."""
    if layers is None:
        layers = "default"
    if isinstance(layers, str):
        if is_layer_set(layers):
            return layer_set(model, layers, task)
        if "," in layers:
            layers = [s.strip() for s in layers.split(",") if s.strip()]
        else:
            if layers not in dict(model.named_modules()):
                _check_name(layers)
            return resolve_layers(model, layers)
    return resolve_layers(model, list(layers))
