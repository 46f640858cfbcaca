"""Attention statistics of every EDT attention head against uniform attention: the face of the package.

* :mod:`~cka_lab.metrics.attention.distance` -- :class:`AttentionDistance`, the streaming accumulator
  over the attention sites of a model (``token_pixel_size``: input pixels per body token).
* :mod:`~cka_lab.metrics.attention.stats` -- per-row statistics of attention maps (distance, entropy,
  largest weight) and the window offsets they are measured on.
* :mod:`~cka_lab.metrics.attention.baselines` -- the exact statistics of uniform attention in the same
  windows and shifted-window masks.
* :mod:`~cka_lab.metrics.attention.summary` -- per-head tables and jackknife summaries.

The sentences stating what the tables show are :mod:`cka_lab.analysis.findings` (``attention_findings``
is still importable from here, loaded from there when asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

from cka_lab.metrics.attention.baselines import uniform_attention_stats
from cka_lab.metrics.attention.distance import DIRECTIONS, AttentionDistance, attention_modules, token_pixel_size
from cka_lab.metrics.attention.stats import ROW_STATS, attention_distance_sums, attention_row_stats, window_offsets
from cka_lab.metrics.attention.summary import HEAD_COLUMNS, SiteInfo, attention_table, locality_summary

__all__ = [
    "DIRECTIONS",
    "HEAD_COLUMNS",
    "ROW_STATS",
    "AttentionDistance",
    "SiteInfo",
    "attention_distance_sums",
    "attention_findings",
    "attention_modules",
    "attention_row_stats",
    "attention_table",
    "locality_summary",
    "token_pixel_size",
    "uniform_attention_stats",
    "window_offsets",
]


def __getattr__(name: str) -> Any:
    """``attention_findings``, a kept import path: the sentences live in :mod:`cka_lab.analysis.findings`
    (imported by name when asked for, so that metrics never loads analysis)."""
    if name == "attention_findings":
        return importlib.import_module("cka_lab.analysis.findings").attention_findings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
