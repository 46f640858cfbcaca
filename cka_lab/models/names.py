"""EDT module names, known once: body stages, transformer blocks, attention sites, q/k/v projections,
head/tail modules, and their short display names.

An EDT body is ``body.layers.<stage>.residual_group.blocks.<block>``; each block's attention runs per
direction in ``...blocks.<block>.attns.<k>`` (the softmax site) from the projection ``...blocks.<block>.qkv``.

>>> attention_site("body.layers.2.residual_group.blocks.3.attns.1")
(2, 3, 1)
>>> short_layer_name("body.layers.2.residual_group.blocks.3.attn_residual"), short_layer_name("head_sr_x2.1")
('s2.b3.attn', 'head.1')
>>> stage_starts(["body.layers.0", "body.layers.0.x", "body.layers.1"])
[2]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["ATTENTION_SITE", "BLOCK", "BLOCK_PATTERN", "BLOCK_QKV", "QKV", "STAGE", "attention_site", "qkv_stage",
           "short_layer_name", "stage_of", "stage_starts"]

#: Glob pattern of every transformer block of an EDT body, in depth order (the default CKA layers).
BLOCK_PATTERN = "body.layers.*.residual_group.blocks.*"
#: A body stage itself: ``body.layers.<stage>``.
STAGE = re.compile(r"^body\.layers\.(\d+)$")
#: A block or anything inside it: ``body.layers.<stage>.residual_group.blocks.<block>...``.
BLOCK = re.compile(r"^body\.layers\.(\d+)\.residual_group\.blocks\.(\d+)")
#: An attention site (softmax over one direction's windows): groups stage, block, direction index.
ATTENTION_SITE = re.compile(r"(?:^|\.)layers\.(\d+)\.residual_group\.blocks\.(\d+)\.attns\.(\d+)$")
#: A block's q/k/v projection: group the stage.
QKV = re.compile(r"(?:^|\.)layers\.(\d+)\.residual_group\.blocks\.\d+\.qkv$")
#: Any block's q/k/v projection, in an EDT body or any model whose blocks are ``...blocks.<j>.qkv``.
BLOCK_QKV = re.compile(r"(?:^|\.)blocks\.\d+\.qkv$")

_IN_STAGE = re.compile(r"body\.layers\.(\d+)")
_HEAD_TAIL = re.compile(r"^(head|tail)_(?:sr_x\d+|dn_g\d+|dr_\w+)(\..*)?$")


def stage_of(name: str) -> int | None:
    """The body stage a module is in (``body.layers.<stage>...``), None outside the body."""
    m = _IN_STAGE.search(name)
    return int(m.group(1)) if m else None


def attention_site(name: str) -> tuple[int, int, int] | None:
    """``(stage, block, direction index)`` of an attention site's module name, None for any other name."""
    m = ATTENTION_SITE.search(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def qkv_stage(name: str) -> int | None:
    """The stage of a block's q/k/v projection, None for any other name."""
    m = QKV.search(name)
    return int(m.group(1)) if m else None


def stage_starts(layers: Sequence[str]) -> list[int]:
    """Indices where a new body stage (``body.layers.i``) starts, for heatmap boundaries."""
    starts, last = [], None
    for i, name in enumerate(layers):
        stage = stage_of(name)
        if i > 0 and stage != last:
            starts.append(i)
        last = stage
    return starts


def short_layer_name(name: str) -> str:
    """Compact display name of an EDT layer: ``body.layers.2.residual_group.blocks.3.mlp`` -> ``s2.b3.mlp``,
    ``...blocks.3.attn_residual`` -> ``s2.b3.attn``, ``body.layers.2`` -> ``s2``, ``head_sr_x2.1`` -> ``head.1``
    (the task suffix dropped, so the paper sets of an SR and a denoising model line up)."""
    m = BLOCK.match(name)
    if m:
        rest = name[m.end():]
        return f"s{m.group(1)}.b{m.group(2)}{'.attn' if rest == '.attn_residual' else rest}"
    m = _HEAD_TAIL.match(name)
    if m:
        return f"{m.group(1)}{m.group(2)}"
    return name.removeprefix("body.").replace("layers.", "s", 1) if name.startswith("body.layers.") else name
