"""Is attention learning? Per-stage and per-head diagnostics written with every row of ``train_log.csv``.

For each stage ``i`` of the body (``body.layers.i``) the columns are

``s{i}_q_update_ratio``, ``s{i}_k_update_ratio``, ``s{i}_v_update_ratio``
    ``||W_after - W_before||_F / ||W_before||_F`` of the q, k and v parts of the stage's ``qkv``
    weights over the **log interval** (``W_before``: at the previous log row, or the start of the
    run). A block's ``qkv.weight`` is ``(3C, C)``, rows ``0:C`` q, ``C:2C`` k, ``2C:3C`` v; the
    stage's matrices of all its blocks count as one (Frobenius norms over all of them).
``s{i}_{kind}_entropy_rel`` for ``kind`` in ``plain``, ``shifted``
    Entropy of each attention row divided by ``log(n)``, ``n`` the number of keys the mask allows
    in that row (shifted windows add -100 to the keys across the wrapped border: not allowed),
    averaged over rows, then over the heads of the stage's plain (even) or shifted (odd) blocks,
    both window directions. 1 is uniform attention. Plain and shifted blocks are kept apart: they
    differ (masks, and what they learn).
``s{i}_{kind}_learnt``
    The fraction of those heads (block x direction x head: 36 per kind in an EDT-T stage) whose
    mean relative entropy is at or below :data:`LEARNT_ENTROPY` (0.95): heads that have learnt to
    attend to part of their window.
``s{i}_{kind}_sharpest``
    The lowest mean relative entropy of a head of that kind in the stage.
``s{i}_{kind}_logit_spread``
    Standard deviation (population, over the allowed keys) of the pre-softmax logits of a row,
    averaged the same way. Near 0, q and k have not learnt anything the softmax can use.

Every head's own numbers go to ``attn_heads.csv`` beside the log (one row per iteration, stage,
block, direction and head), for the per-head figure of ``cka-lab plot-log``.

The attention statistics are measured on a fixed probe (:func:`heldout_probe`: crops of the
**validation** inputs at the training patch size, images the run never trains on; without a
validation set, ``schedule.probe_size`` training patches per head drawn once from the seed) in eval
mode without gradients, through the one attention tap of :mod:`cka_lab.features.attention` (the
``mask`` argument of each ``...attns.k`` module, the logits and probabilities of its softmax), removed
when the ``with`` block ends. The probe draws nothing from the global RNGs, so a run with diagnostics trains
exactly as one without.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from cka_lab.features.attention import AttentionMap, AttentionTap
from cka_lab.models.names import attention_site, qkv_stage

__all__ = [
    "STATS",
    "KIND_STATS",
    "LEARNT_ENTROPY",
    "diagnostic_columns",
    "row_entropy_spread",
    "head_row_stats",
    "AttentionProbe",
    "summarise_heads",
    "QKVUpdates",
    "probe_inputs",
    "heldout_probe",
    "TrainingDiagnostics",
    "progress_text",
]

#: Per-stage q/k/v statistics (column ``s{i}_{stat}``).
STATS = ("q_update_ratio", "k_update_ratio", "v_update_ratio")
#: Per-stage attention statistics of each block kind (column ``s{i}_{kind}_{stat}``).
KIND_STATS = ("entropy_rel", "learnt", "sharpest", "logit_spread")
KINDS = ("plain", "shifted")
#: A head whose mean relative entropy is at or below this has learnt (issue 20's criterion).
LEARNT_ENTROPY = 0.95



def diagnostic_columns(n_stages: int) -> list[str]:
    """``s0_q_update_ratio, s0_k_update_ratio, s0_v_update_ratio, s0_plain_entropy_rel, ...`` per stage."""
    cols = []
    for i in range(n_stages):
        cols += [f"s{i}_{s}" for s in STATS]
        cols += [f"s{i}_{k}_{s}" for k in KINDS for s in KIND_STATS]
    return cols


def _row_values(logits: Tensor, probs: Tensor, allowed: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: relative entropy, logit spread (float64) and whether the row counts (>= 2 keys)."""
    lg, p = logits.double(), probs.double()
    ok = torch.ones_like(lg, dtype=torch.bool) if allowed is None else allowed.expand_as(lg)
    n = ok.sum(-1)  # (...,) allowed keys per row
    rows = n >= 2
    okf = ok.double()
    ent = -(torch.special.xlogy(p, p) * okf).sum(-1)
    rel = ent / torch.log(n.clamp(min=2).double())
    mean = (lg * okf).sum(-1) / n.clamp(min=1)
    var = (((lg - mean.unsqueeze(-1)) * okf) ** 2).sum(-1) / n.clamp(min=1)
    return rel, var.sqrt(), rows


def row_entropy_spread(logits: Tensor, probs: Tensor, allowed: Tensor | None = None) -> tuple[float, float, int]:
    """Sums over rows of relative entropy and logit spread, and the number of rows counted.

    ``logits, probs: (..., N)`` (pre-softmax scores and the softmax of them), ``allowed``: bool,
    broadcastable to them (``None``: every key). Rows with fewer than two allowed keys have no
    defined relative entropy and are skipped. Computed in float64.
    """
    rel, spread, rows = _row_values(logits, probs, allowed)
    return float(rel[rows].sum()), float(spread[rows].sum()), int(rows.sum())


def head_row_stats(logits: Tensor, probs: Tensor, allowed: Tensor | None, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The sums of :func:`row_entropy_spread` kept apart per head.

    ``logits, probs: (..., h, ..., N)`` with the head axis at ``head_dim`` (e.g. ``(B, nW, h, N, N)``,
    ``head_dim=2``). Returns three ``(h,)`` float64 tensors: summed relative entropy, summed logit
    spread and the number of rows counted.
    """
    rel, spread, rows = _row_values(logits, probs, allowed)
    rows = rows.expand_as(rel)
    dims = [d for d in range(rel.ndim) if d != head_dim]
    w = rows.double()
    return (rel * w).sum(dims), (spread * w).sum(dims), w.sum(dims)


class AttentionProbe:
    """Per-head relative attention entropy and logit spread, from hooks on every attention module.

    ::

        with AttentionProbe(model) as probe:
            model(inputs)
        probe.heads()     # DataFrame: stage, block, kind, direction, head, entropy_rel, logit_spread, rows
    """

    def __init__(self, model: nn.Module):
        self._tap = AttentionTap(model, self._measure)
        self._sites = {name: attention_site(name) for name, _ in self._tap.modules}
        self.reset()

    def reset(self) -> None:
        self.sums: dict[tuple[int, int, int], list[Tensor]] = {}

    def __enter__(self) -> "AttentionProbe":
        self._tap.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tap.close()

    def _measure(self, m: AttentionMap) -> None:
        site = self._sites[m.module]
        logits, probs, mask = m.logits, m.probs, m.mask
        h = logits.shape[1]
        if mask is not None:
            nW, N = mask.shape[0], mask.shape[-1]
            shape = (-1, nW, h, N, N)  # (B, nW, h, N, N)
            logits, probs = logits.reshape(shape), probs.reshape(shape)
            allowed, head_dim = (mask == 0)[None, :, None], 2
        else:
            allowed, head_dim = None, 1
        sums = head_row_stats(logits, probs, allowed, head_dim)
        acc = self.sums.get(site)
        self.sums[site] = list(sums) if acc is None else [a + b for a, b in zip(acc, sums)]

    def heads(self) -> pd.DataFrame:
        """One row per head seen: ``stage, block, kind, direction, head, entropy_rel, logit_spread, rows``.

        ``kind`` is ``plain`` (even block) or ``shifted`` (odd block), ``direction`` 0 the horizontal
        and 1 the vertical strip; the statistics are means over every row seen.
        """
        recs = []
        for (stage, block, direction), (ent, spread, n) in sorted(self.sums.items()):
            for j in range(ent.numel()):
                rows = float(n[j])
                recs.append({"stage": stage, "block": block, "kind": KINDS[block % 2], "direction": direction,
                             "head": j, "entropy_rel": float(ent[j]) / rows if rows else float("nan"),
                             "logit_spread": float(spread[j]) / rows if rows else float("nan"), "rows": int(rows)})
        cols = ["stage", "block", "kind", "direction", "head", "entropy_rel", "logit_spread", "rows"]
        return pd.DataFrame.from_records(recs, columns=cols)


def summarise_heads(heads: pd.DataFrame, threshold: float = LEARNT_ENTROPY) -> pd.DataFrame:
    """Per stage and block kind: mean entropy, fraction of heads at or below ``threshold``, sharpest head.

    ``heads``: the table of :meth:`AttentionProbe.heads`. Returns columns ``stage, kind, heads,
    entropy_rel, learnt, sharpest, logit_spread``.
    """
    g = heads.groupby(["stage", "kind"], sort=True)
    out = g.agg(heads=("entropy_rel", "size"), entropy_rel=("entropy_rel", "mean"),
                learnt=("entropy_rel", lambda e: float((e <= threshold).mean())),
                sharpest=("entropy_rel", "min"), logit_spread=("logit_spread", "mean"))
    return out.reset_index()


def _qkv_weights(model: nn.Module) -> dict[int, list[Tensor]]:
    out: dict[int, list[Tensor]] = defaultdict(list)
    for name, mod in model.named_modules():
        stage = qkv_stage(name)
        if stage is not None and isinstance(mod, nn.Linear):
            out[stage].append(mod.weight)
    return dict(sorted(out.items()))


class QKVUpdates:
    """Update-to-weight ratios of q, k and v per stage since the last :meth:`measure` (or creation)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.before = self._snapshot()

    def _snapshot(self) -> dict[int, list[Tensor]]:
        return {s: [w.detach().to("cpu", torch.float64, copy=True) for w in ws] for s, ws in _qkv_weights(self.model).items()}

    def measure(self) -> dict[int, tuple[float, float, float]]:
        """``{stage: (q ratio, k ratio, v ratio)}`` and a new reference point."""
        now = self._snapshot()
        out = {}
        for s, ws in now.items():
            ratios = []
            for part in range(3):
                num = den = 0.0
                for w0, w1 in zip(self.before[s], ws):
                    c = w0.shape[0] // 3
                    a, b = w0[part * c : (part + 1) * c], w1[part * c : (part + 1) * c]
                    num += float(((b - a) ** 2).sum())
                    den += float((a**2).sum())
                ratios.append(math.sqrt(num / den) if den > 0 else float("nan"))
            out[s] = tuple(ratios)
        self.before = now
        return out


def probe_inputs(sets: Sequence, size: int, seed: int) -> list[Tensor]:
    """One fixed ``(size, 3, h, w)`` input batch per patch set, from ``default_rng([seed, 0xA77E])``."""
    out = []
    for k, ps in enumerate(sets):
        rng = np.random.default_rng([int(seed), 0xA77E, k])
        out.append(torch.stack([ps.sample(rng)[0] for _ in range(size)]))
    return out


def heldout_probe(inputs: Sequence[Tensor], patch: int, per_image: int = 4, limit: int = 16) -> Tensor:
    """Crops of held-out inputs at the training patch size: ``(n, 3, patch, patch)``.

    ``inputs``: ``(1, 3, h, w)`` validation inputs (LR images for SR, noisy ones for denoising). From
    each, up to ``per_image`` crops on an evenly spaced grid (the centre when one fits); at most
    ``limit`` crops in all, images taken in turn. Inputs smaller than ``patch`` are skipped.
    """
    per: list[list[Tensor]] = []
    k = max(1, int(math.isqrt(per_image)))
    for x in inputs:
        h, w = x.shape[-2:]
        if h < patch or w < patch:
            continue
        ys = np.unique(np.linspace(0, h - patch, k + 2)[1:-1].round().astype(int))  # distinct positions
        xs = np.unique(np.linspace(0, w - patch, k + 2)[1:-1].round().astype(int))
        per.append([x[0, :, y : y + patch, c : c + patch] for y in ys for c in xs])
    crops: list[Tensor] = []
    for j in range(max((len(c) for c in per), default=0)):
        crops += [c[j] for c in per if j < len(c)]
    if not crops:
        raise ValueError(f"no validation input is at least {patch} px on each side")
    return torch.stack(crops[:limit])


class TrainingDiagnostics:
    """The diagnostic columns of one log row: q/k/v update ratios and attention statistics per stage.

    ``probe``: one ``(n, 3, h, w)`` input per head of the model (``None`` for a head not probed).
    """

    def __init__(self, model: nn.Module, probe: list[Tensor | None], device: torch.device | str = "cpu",
                 source: str = "training patches"):
        self.model = model
        self.probe = [None if x is None else x.to(device) for x in probe]
        self.source = source
        self.updates = QKVUpdates(model)
        self.n_stages = len(_qkv_weights(model))
        self.last_heads: pd.DataFrame | None = None

    @property
    def columns(self) -> list[str]:
        return diagnostic_columns(self.n_stages)

    def attention(self) -> pd.DataFrame:
        """Per-head table (:meth:`AttentionProbe.heads`) on the probe, every probed head of the model."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), AttentionProbe(self.model) as probe:
                for task, x in zip(self.model.tasks, self.probe):
                    if x is not None:
                        self.model.forward_task(x, task)
        finally:
            self.model.train(was_training)
        return probe.heads()

    def row(self) -> dict[str, float]:
        updates = self.updates.measure()
        heads = self.attention()
        self.last_heads = heads
        summary = {(r.stage, r.kind): r for r in summarise_heads(heads).itertuples()} if len(heads) else {}
        row: dict[str, float] = {}
        nan = float("nan")
        for s in range(self.n_stages):
            q, k, v = updates.get(s, (nan,) * 3)
            row.update({f"s{s}_q_update_ratio": q, f"s{s}_k_update_ratio": k, f"s{s}_v_update_ratio": v})
            for kind in KINDS:
                r = summary.get((s, kind))
                for stat in KIND_STATS:
                    row[f"s{s}_{kind}_{stat}"] = float(getattr(r, stat)) if r is not None else nan
        return row


def progress_text(row: dict[str, float], n_stages: int) -> str:
    """Compact: plain-block relative entropy and learnt-head fraction per stage, q/k/v update ratios."""
    ent = " ".join(f"{row[f's{s}_plain_entropy_rel']:.3f}" for s in range(n_stages))
    learnt = " ".join(f"{row[f's{s}_plain_learnt']:.2f}" for s in range(n_stages))
    upd = " ".join(
        f"{p} {np.nanmean([row[f's{s}_{p}_update_ratio'] for s in range(n_stages)]):.1e}" for p in "qkv"
    )
    return f"plain attn H/Hmax {ent} | learnt {learnt} | upd {upd}"
