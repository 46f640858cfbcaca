"""The one attention tap: every map's logits, probabilities, mask, size and window, for both readers
(the attention statistics and the training diagnostics), and no hook left behind."""

from __future__ import annotations

import torch

from cka_lab.features import AttentionTap, attention_modules
from cka_lab.metrics.attention import AttentionDistance
from cka_lab.models import create_edt
from cka_lab.train.diagnostics import AttentionProbe


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_tap_gives_the_softmax_input_and_output_with_the_mask_and_the_window():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    maps = []
    with torch.no_grad(), AttentionTap(model, maps.append):
        model.forward_task(torch.rand(2, 3, 24, 24), "x2")
    assert _hooks(model) == 0
    assert [m.module for m in maps] == [name for name, _ in attention_modules(model)]
    for m in maps:
        assert torch.allclose(m.probs, torch.softmax(m.logits, -1))
        assert m.size == (24, 24) and m.probs.shape[-1] == m.window[0] * m.window[1]
        assert m.probs.shape[0] == 2 * (24 // m.window[0]) * (24 // m.window[1])
        assert (m.mask is None) == (".blocks.0." in m.module)  # block 1 is the shifted one


def test_the_statistics_and_the_diagnostics_read_attention_through_the_tap():
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    n_sites = len(attention_modules(model))
    with AttentionDistance(model, task="x2") as ad, AttentionProbe(model) as ap:
        assert _hooks(model) == 2 * 2 * n_sites  # each: one pre-hook on the module, one hook on its softmax
        with torch.no_grad():
            model.forward_task(torch.rand(1, 3, 24, 24), "x2")
    assert _hooks(model) == 0
    assert len(ad.compute()) == len(ap.heads()) == n_sites * 6
