"""Is attention learning? Per-stage diagnostics written with every row of ``train_log.csv``.

For each stage ``i`` of the body (``body.layers.i``) the columns are

``s{i}_q_update_ratio``, ``s{i}_k_update_ratio``, ``s{i}_v_update_ratio``
    ``||W_after - W_before||_F / ||W_before||_F`` of the q, k and v parts of the stage's ``qkv``
    weights over the **log interval** (``W_before``: at the previous log row, or the start of the
    run). A block's ``qkv.weight`` is ``(3C, C)``, rows ``0:C`` q, ``C:2C`` k, ``2C:3C`` v; the
    stage's matrices of all its blocks count as one (Frobenius norms over all of them).
``s{i}_attn_entropy_rel``
    Entropy of each attention row divided by ``log(n)``, ``n`` the number of keys the mask allows
    in that row (shifted windows add -100 to the keys across the wrapped border: not allowed),
    averaged over rows, heads, blocks and both window directions. 1 is uniform attention.
``s{i}_logit_spread``
    Standard deviation (population, over the allowed keys) of the pre-softmax logits of a row,
    averaged the same way. Near 0, q and k have not learnt anything the softmax can use.

The attention statistics are measured on a fixed probe batch (``schedule.probe_size`` training
patches per head, drawn once from the seed) in eval mode without gradients, with hooks on each
``...attns.k`` module (its ``mask`` argument), and forward pre-hook / forward hook on
``...attns.k.softmax`` (logits / probabilities), removed when the ``with`` block ends. The probe
draws nothing from the global RNGs, so a run with diagnostics trains exactly as one without.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cka_lab.metrics.attention import attention_modules

__all__ = [
    "STATS",
    "diagnostic_columns",
    "attention_row_stats",
    "AttentionProbe",
    "QKVUpdates",
    "probe_inputs",
    "TrainingDiagnostics",
    "progress_text",
]

#: Per-stage statistics, in column order (column ``s{i}_{stat}``).
STATS = ("q_update_ratio", "k_update_ratio", "v_update_ratio", "attn_entropy_rel", "logit_spread")

_QKV = re.compile(r"(?:^|\.)layers\.(\d+)\.residual_group\.blocks\.\d+\.qkv$")
_ATTN = re.compile(r"(?:^|\.)layers\.(\d+)\.residual_group\.blocks\.\d+\.attns\.\d+$")


def diagnostic_columns(n_stages: int) -> list[str]:
    """``s0_q_update_ratio, ..., s0_logit_spread, s1_...`` for ``n_stages`` stages."""
    return [f"s{i}_{s}" for i in range(n_stages) for s in STATS]


def attention_row_stats(logits: Tensor, probs: Tensor, allowed: Tensor | None = None) -> tuple[float, float, int]:
    """Sums over rows of relative entropy and logit spread, and the number of rows counted.

    ``logits, probs: (..., N)`` (pre-softmax scores and the softmax of them), ``allowed``: bool,
    broadcastable to them (``None``: every key). Rows with fewer than two allowed keys have no
    defined relative entropy and are skipped. Computed in float64.
    """
    lg, p = logits.double(), probs.double()
    ok = torch.ones_like(lg, dtype=torch.bool) if allowed is None else allowed.expand_as(lg)
    n = ok.sum(-1)  # (...,) allowed keys per row
    rows = n >= 2
    okf = ok.double()
    ent = -(torch.special.xlogy(p, p) * okf).sum(-1)
    rel = ent / torch.log(n.clamp(min=2).double())
    mean = (lg * okf).sum(-1) / n.clamp(min=1)
    var = (((lg - mean.unsqueeze(-1)) * okf) ** 2).sum(-1) / n.clamp(min=1)
    spread = var.sqrt()
    return float(rel[rows].sum()), float(spread[rows].sum()), int(rows.sum())


class AttentionProbe:
    """Relative attention entropy and logit spread per stage, from hooks on every attention module.

    ::

        with AttentionProbe(model) as probe:
            model(inputs)
        probe.compute()   # {stage: (entropy_rel, logit_spread)}
    """

    def __init__(self, model: nn.Module):
        self._sites = []
        for name, mod in attention_modules(model):
            m = _ATTN.search(name)
            if m:
                self._sites.append((int(m.group(1)), mod))
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        self.sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])

    def __enter__(self) -> "AttentionProbe":
        for stage, mod in self._sites:
            state: dict = {}
            self._handles.append(mod.register_forward_pre_hook(self._grab_mask(state), with_kwargs=True))
            self._handles.append(mod.softmax.register_forward_pre_hook(self._grab_logits(state)))
            self._handles.append(mod.softmax.register_forward_hook(self._measure(stage, state)))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @staticmethod
    def _grab_mask(state: dict):
        def hook(_module, args, kwargs):
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            state["mask"] = mask  # (nW, N, N) additive, 0 where allowed, or None

        return hook

    @staticmethod
    def _grab_logits(state: dict):
        def hook(_module, args):
            state["logits"] = args[0].detach()

        return hook

    def _measure(self, stage: int, state: dict):
        def hook(_module, _args, probs: Tensor):
            logits = state.pop("logits")
            mask = state.get("mask")
            if mask is not None:
                nW, N = mask.shape[0], mask.shape[-1]
                shape = (-1, nW, logits.shape[1], N, N)  # (B, nW, h, N, N)
                logits, probs = logits.reshape(shape), probs.detach().reshape(shape)
                allowed = (mask == 0)[None, :, None]
            else:
                allowed = None
            ent, spread, rows = attention_row_stats(logits, probs.detach(), allowed)
            acc = self.sums[stage]
            acc[0] += ent
            acc[1] += spread
            acc[2] += rows

        return hook

    def compute(self) -> dict[int, tuple[float, float]]:
        """``{stage: (mean relative entropy, mean logit spread)}`` over every row seen."""
        return {s: (e / n, sp / n) for s, (e, sp, n) in sorted(self.sums.items()) if n}


def _qkv_weights(model: nn.Module) -> dict[int, list[Tensor]]:
    out: dict[int, list[Tensor]] = defaultdict(list)
    for name, mod in model.named_modules():
        m = _QKV.search(name)
        if m and isinstance(mod, nn.Linear):
            out[int(m.group(1))].append(mod.weight)
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


class TrainingDiagnostics:
    """The diagnostic columns of one log row: q/k/v update ratios and attention statistics per stage."""

    def __init__(self, model: nn.Module, probe: list[Tensor], device: torch.device | str = "cpu"):
        self.model = model
        self.probe = [x.to(device) for x in probe]
        self.updates = QKVUpdates(model)
        self.n_stages = len(_qkv_weights(model))

    @property
    def columns(self) -> list[str]:
        return diagnostic_columns(self.n_stages)

    def attention(self) -> dict[int, tuple[float, float]]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), AttentionProbe(self.model) as probe:
                self.model(self.probe)
        finally:
            self.model.train(was_training)
        return probe.compute()

    def row(self) -> dict[str, float]:
        updates = self.updates.measure()
        attn = self.attention()
        row: dict[str, float] = {}
        for s in range(self.n_stages):
            q, k, v = updates.get(s, (float("nan"),) * 3)
            ent, spread = attn.get(s, (float("nan"), float("nan")))
            row.update({f"s{s}_q_update_ratio": q, f"s{s}_k_update_ratio": k, f"s{s}_v_update_ratio": v,
                        f"s{s}_attn_entropy_rel": ent, f"s{s}_logit_spread": spread})
        return row


def progress_text(row: dict[str, float], n_stages: int) -> str:
    """Compact: relative entropy and logit spread per stage, q/k/v update ratios (mean over stages)."""
    ent = " ".join(f"{row[f's{s}_attn_entropy_rel']:.3f}" for s in range(n_stages))
    spread = " ".join(f"{row[f's{s}_logit_spread']:.2g}" for s in range(n_stages))
    upd = " ".join(
        f"{p} {np.nanmean([row[f's{s}_{p}_update_ratio'] for s in range(n_stages)]):.1e}" for p in "qkv"
    )
    return f"attn H/Hmax {ent} | spread {spread} | upd {upd}"
