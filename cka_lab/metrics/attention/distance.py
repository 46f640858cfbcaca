"""Attention statistics of every EDT attention head against uniform attention in the same windows.

:class:`AttentionDistance` taps the ``softmax`` of every window-attention module of an EDT
(:class:`~cka_lab.features.attention.AttentionTap`) and
accumulates, per crop and head, the sums of the row statistics of
:mod:`cka_lab.metrics.attention.stats` (attention distance in input pixels, entropy, largest weight)
together with the exact statistics of uniform attention under the same windows and shifted-window
masks (:mod:`cka_lab.metrics.attention.baselines`). ``compute()`` gives one row per (layer, block,
kind, direction, head) with ``locality = distance / uniform_distance`` and
``entropy_rel = entropy / uniform_entropy`` and their jackknife intervals over crops
(:mod:`cka_lab.metrics.attention.summary`); ``summary()`` pools heads per layer, kind and direction.
Plain and shifted blocks (``kind``) are never mixed.

Distances are Euclidean in the body's token grid times the size of a token in input pixels: 1 for SR
heads (the body runs at the low-resolution input's size) and SF models, ``2**depth`` (4 for the
official EDTs) for denoise/derain heads that downsample.

The accumulator follows torchmetrics' protocol (``update / compute / reset``, ``merge`` and a
distributed ``all_reduce``; ``compute()`` also gathers the crops of all ranks by itself when
``torch.distributed`` is initialised): its states are per-crop sums, one list per site, concatenated
across ranks, so N processes sharing the crops give the one-process result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from cka_lab.errors import CkaLabError
from cka_lab.features.attention import AttentionMap, AttentionTap, attention_modules
from cka_lab.models.names import attention_site
from cka_lab.metrics.attention.baselines import uniform_attention_stats
from cka_lab.metrics.attention.stats import ROW_STATS, attention_distance_sums, attention_row_stats, window_offsets
from cka_lab.metrics.attention.summary import HEAD_COLUMNS, SiteInfo, attention_table, locality_summary

__all__ = [
    "AttentionDistance",
    "attention_modules",
    "token_pixel_size",
    "locality_summary",
    "attention_row_stats",
    "attention_distance_sums",
    "uniform_attention_stats",
    "window_offsets",
    "HEAD_COLUMNS",
]

DIRECTIONS = ("horizontal", "vertical")
_UNIFORM = ("u_dist", "u_entropy", "u_max", "u_dx", "u_dy")


@dataclass(frozen=True)
class _Site:
    info: SiteInfo
    window: tuple[int, int]
    shift: tuple[int, int] | None
    heads: int


def token_pixel_size(model: nn.Module, task: str | None = None) -> float:
    """Input pixels per body token for ``task``: ``2**depth`` for denoise/derain heads that downsample
    (non-SF models), else 1 (SR: the body runs at the low-resolution input's size)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return 1.0
    return float(cfg.token_stride(task or cfg.tasks[0]))




class AttentionDistance(Metric):
    """Streaming attention statistics of every EDT attention head, with uniform baselines.

    Use as a context manager around forward passes; the hooks are removed when the block ends, also
    when it raises::

        with AttentionDistance(model, task="x2") as ad:
            for x in batches:
                model.forward_task(x, "x2")
        heads = ad.compute()      # one row per (layer, block, kind, direction, head)
        stages = ad.summary()     # one row per (layer, kind, direction), heads pooled
        attention_findings(stages)  # the sentences: cka_lab.analysis.findings

    ``pixel_size`` (input pixels per body token) defaults to the task's (:func:`token_pixel_size`);
    ``radii`` (input pixels) set the columns ``within_<r>``; ``confidence`` the interval level.
    Extra keyword arguments go to :class:`torchmetrics.Metric` (e.g. ``process_group``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str | None = None,
        pixel_size: float | None = None,
        radii: tuple[float, ...] = (2, 4, 8),
        confidence: float = 0.95,
        **metric_kwargs: Any,
    ):
        super().__init__(**metric_kwargs)
        if not 0 < confidence < 1:
            raise CkaLabError(f"confidence must lie in (0, 1), got {confidence}")
        mods = attention_modules(model)
        if not mods:
            raise CkaLabError(
                f"{type(model).__name__} has no window-attention modules to measure: attention distance needs an EDT"
            )
        object.__setattr__(self, "model", model)  # not a submodule: the metric's .to() and state_dict leave it alone
        self.radii = tuple(radii)
        self.confidence = confidence
        self.pixel_size = float(pixel_size) if pixel_size is not None else token_pixel_size(model, task)
        self.stat_keys = ROW_STATS + tuple(f"within_{r:g}" for r in self.radii) + _UNIFORM
        named = dict(model.named_modules())
        self._sites: dict[str, _Site] = {}
        self._attn_modules: list[tuple[str, nn.Module]] = []
        for name, mod in mods:
            layer, block, k = attention_site(name)
            shifts = getattr(named.get(name.rsplit(".attns.", 1)[0]), "shifts", None)
            kind = "plain" if shifts is None else "shifted"
            info = SiteInfo(name, layer, block, kind, DIRECTIONS[k])
            shift = None if shifts is None else tuple(shifts[k])
            self._sites[name] = _Site(info, tuple(mod.window), shift, mod.num_heads)
            self._attn_modules.append((name, mod))
            self.add_state(self._state(name), default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)
        self._tap: AttentionTap | None = None
        self._reduced = False

    @staticmethod
    def _state(name: str) -> str:
        return "crops__" + name.replace(".", "_")

    # -- hooks (one AttentionTap) -------------------------------------------------------------------
    def __enter__(self) -> AttentionDistance:
        if self._tap is not None:
            raise CkaLabError("this AttentionDistance is already recording: enter its `with` block only once at a time")
        tap = AttentionTap(self.model, self._on_map, self._attn_modules)
        tap.__enter__()
        self._tap = tap
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        if self._tap is not None:
            self._tap.close()
            self._tap = None

    def _on_map(self, m: AttentionMap) -> None:
        self.update(m.module, m.probs, m.size, logits=m.logits)

    # -- accumulator -------------------------------------------------------------------------------
    def update(self, module: str, attn: Tensor, size: tuple[int, int], *, logits: Tensor | None = None) -> None:
        """Add one attention map of ``module`` (a name of :func:`attention_modules`).

        ``attn: (B*nW, h, N, N)`` softmax output, windows crop-major; ``size = (H, W)`` the body map
        the windows tile (``nW = H/wh * W/ww``); ``logits`` (optional, the softmax input) make the
        entropy cheaper (see :func:`attention_row_stats`). Appends the per-crop sums of the row statistics and of
        the uniform baseline for this map size.
        """
        site = self._sites.get(module)
        if site is None:
            raise CkaLabError(f"{module!r} is not an attention module of this model")
        if self._reduced:
            raise CkaLabError("this AttentionDistance was already all-reduced; reset() before accumulating again")
        (H, W), (wh, ww) = size, site.window
        if H % wh or W % ww or attn.shape[0] % ((H // wh) * (W // ww)):
            raise CkaLabError(f"{attn.shape[0]} windows of {wh}x{ww} do not tile whole {H}x{W} crops")
        crops = attn.shape[0] // ((H // wh) * (W // ww))
        stats = attention_row_stats(attn, site.window, pixel_size=self.pixel_size, radii=self.radii, crops=crops,
                                    logits=logits)
        u = uniform_attention_stats(site.window, (H, W), site.shift, self.pixel_size)
        rows = stats["n"]  # (B, h) query rows of each crop
        uniform = (u.distance, u.entropy, u.max_weight, u.mean_dx, u.mean_dy)
        stats.update({k: rows * v for k, v in zip(_UNIFORM, uniform)})
        block = torch.stack([stats[k] for k in self.stat_keys], dim=1)  # (B, K, h)
        state = getattr(self, self._state(module))
        if isinstance(state, Tensor):  # after a merge or gather the list state may be one tensor
            state = [state]
        state.append(block.flatten())
        setattr(self, self._state(module), state)

    def _crop_sums(self) -> list[tuple[SiteInfo, dict[str, Tensor]]]:
        out = []
        K = len(self.stat_keys)
        for name, site in self._sites.items():
            state = getattr(self, self._state(name))
            if isinstance(state, list):
                if not state:
                    continue
                state = torch.cat(state)
            if state.numel() == 0:
                continue
            crops = state.double().reshape(-1, K, site.heads)  # (C, K, h)
            out.append((site.info, {k: crops[:, i] for i, k in enumerate(self.stat_keys)}))
        return out

    def compute(self) -> pd.DataFrame:
        """One row per (layer, block, kind, direction, head); columns :data:`HEAD_COLUMNS` and more
        (see :func:`~cka_lab.metrics.attention.summary.attention_table`)."""
        return attention_table(self._crop_sums(), confidence=self.confidence)

    def summary(self, by: tuple[str, ...] = ("layer", "kind", "direction")) -> pd.DataFrame:
        """Heads pooled per group (``by`` must contain ``kind``), with jackknife intervals over crops."""
        with self.sync_context(should_sync=self.sync_on_compute):
            return attention_table(self._crop_sums(), by=by, confidence=self.confidence)

    def reset(self) -> None:
        super().reset()
        self._reduced = False

    def merge(self, other: AttentionDistance) -> AttentionDistance:
        """Add the crops of ``other`` (an AttentionDistance of the same architecture), in place; returns self."""
        if not isinstance(other, AttentionDistance) or list(other._sites) != list(self._sites):
            raise CkaLabError("merge needs two AttentionDistance over the same attention modules")
        if (other.pixel_size, other.radii) != (self.pixel_size, self.radii):
            raise CkaLabError("merge needs the same pixel_size and radii on both AttentionDistance")
        self.merge_state(other)
        self._computed = None  # torchmetrics' cached compute() result is stale now
        return self

    def all_reduce(self, group: Any | None = None) -> None:
        """Gather the crops of every rank of a ``torch.distributed`` group, in place.

        Afterwards every rank holds all crops (in rank order) and ``compute()`` gives the same table
        everywhere without gathering again. ``compute()`` alone also gathers (and keeps each rank's
        own crops for further updates), so calling this is optional.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise CkaLabError("torch.distributed is not initialised: call init_process_group first (or use merge)")
        if self._reduced:
            raise CkaLabError("this AttentionDistance was already all-reduced; reset() before accumulating again")
        self.sync(process_group=group, distributed_available=lambda: True)
        gathered = dict(self.metric_state)
        self.unsync()
        for attr, value in gathered.items():
            setattr(self, attr, value)
        self._computed = None
        self._reduced = True

    def sync(self, *args: Any, should_sync: bool = True, **kwargs: Any) -> None:
        """torchmetrics' sync, skipped once :meth:`all_reduce` has gathered every rank's crops."""
        super().sync(*args, should_sync=should_sync and not self._reduced, **kwargs)

    def __repr__(self) -> str:
        return f"AttentionDistance({len(self._sites)} attention modules, pixel_size={self.pixel_size:g})"
