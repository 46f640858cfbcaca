"""Training diagnostics: attention entropy / logit spread on hand-computable rows, masks, q/k/v update ratios."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from cka_lab.models import create_edt
from cka_lab.train.config import parse_config
from cka_lab.train.diagnostics import (
    AttentionProbe,
    QKVUpdates,
    STATS,
    attention_row_stats,
    diagnostic_columns,
    probe_inputs,
    progress_text,
)
from cka_lab.train.loop import train
from tests.train.helpers import tiny_config


def _reference_row(logits: list[float], allowed: list[bool]) -> tuple[float, float]:
    """float64 by hand: softmax over the allowed keys, entropy / log(n), population std of the logits."""
    kept = [x for x, a in zip(logits, allowed) if a]
    z = sum(math.exp(x) for x in kept)
    p = [math.exp(x) / z for x in kept]
    h = -sum(q * math.log(q) for q in p)
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((x - mean) ** 2 for x in kept) / len(kept))
    return h / math.log(len(kept)), std


def test_row_stats_match_a_hand_computation_with_masked_keys():
    rows = [[0.3, -1.2, 2.0, 0.7], [0.0, 0.0, 0.0, 0.0], [1.5, -0.5, 0.25, 3.0]]
    allowed = [[True, True, True, True], [True, True, False, True], [False, True, True, False]]
    logits = torch.tensor(rows, dtype=torch.float64)
    ok = torch.tensor(allowed)
    masked = logits + (~ok).double() * -100.0  # what the model's softmax sees
    probs = torch.softmax(masked, -1)
    ent, spread, n = attention_row_stats(masked, probs, ok)
    refs = [_reference_row(r, a) for r, a in zip(rows, allowed)]
    assert n == 3
    assert ent == pytest.approx(sum(r[0] for r in refs), abs=1e-12)
    assert spread == pytest.approx(sum(r[1] for r in refs), abs=1e-12)
    # uniform over the allowed keys is exactly 1, whatever the number of masked keys
    assert refs[1][0] == pytest.approx(1.0)
    # without the mask the -100 keys would count: a different (wrong) answer
    assert attention_row_stats(masked, probs)[0] != pytest.approx(ent, abs=1e-3)


def test_rows_with_one_allowed_key_are_skipped():
    logits = torch.tensor([[0.0, -100.0], [0.1, 0.2]])
    ok = torch.tensor([[True, False], [True, True]])
    ent, spread, n = attention_row_stats(logits, torch.softmax(logits, -1), ok)
    assert n == 1
    assert spread == pytest.approx(0.05, abs=1e-7)


def _zero_qk(model: torch.nn.Module) -> None:
    """q = k = 0 in every block: every logit is 0, attention is uniform over the allowed keys."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(".qkv"):
                c = mod.weight.shape[1]
                mod.weight[: 2 * c] = 0
                mod.bias[: 2 * c] = 0


def test_uniform_attention_in_shifted_windows_is_exactly_one_and_hooks_are_removed():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", image_size=24).eval()
    _zero_qk(model)
    x = torch.rand(1, 3, 24, 24)  # shifted windows wrap around: masked keys
    with torch.no_grad(), AttentionProbe(model) as probe:
        model([x])
    stats = probe.compute()
    assert sorted(stats) == [0, 1, 2, 3]
    for ent, spread in stats.values():
        assert ent == pytest.approx(1.0, abs=1e-6)  # float32 probabilities
        assert spread == pytest.approx(0.0, abs=1e-12)
    # had the masked keys counted, shifted blocks would be far below uniform
    assert any(float(m.attn_mask_h.lt(0).any()) for m in model.modules() if hasattr(m, "attn_mask_h"))
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_trained_like_attention_is_below_uniform():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", image_size=24).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(".qkv"):
                mod.weight.mul_(200.0)  # large q, k: peaked attention
        with AttentionProbe(model) as probe:
            model([torch.rand(1, 3, 24, 24)])
    for ent, spread in probe.compute().values():
        assert 0.0 < ent < 0.99
        assert spread > 0.5


def test_qkv_update_ratios_by_hand():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", image_size=24)
    upd = QKVUpdates(model)
    blocks = [m for n, m in model.named_modules() if n.startswith("body.layers.1.") and n.endswith(".qkv")]
    c = blocks[0].weight.shape[1]
    before = torch.cat([b.weight.detach()[c : 2 * c].double() for b in blocks])
    with torch.no_grad():
        blocks[0].weight[c : 2 * c] *= 1.5  # k of the first block of stage 1 grows by half
    ratios = upd.measure()
    expected = float(blocks[0].weight.detach()[c : 2 * c].double().sub(before[:c]).norm() / before.norm())
    assert ratios[1][1] == pytest.approx(expected, rel=1e-12)
    assert ratios[1][0] == 0.0 and ratios[1][2] == 0.0
    assert all(r == (0.0, 0.0, 0.0) for s, r in ratios.items() if s != 1)
    assert upd.measure()[1] == (0.0, 0.0, 0.0)  # the reference moved on


def test_columns_and_progress_line():
    cols = diagnostic_columns(2)
    assert cols[:5] == [f"s0_{s}" for s in STATS] and len(cols) == 10
    assert "s0_q_update_ratio" in cols and "s1_attn_entropy_rel" in cols and "s1_logit_spread" in cols
    row = {c: 0.5 for c in cols}
    text = progress_text(row, 2)
    assert text.startswith("attn H/Hmax 0.500 0.500") and "upd q 5.0e-01" in text


def test_diagnostics_are_logged_and_do_not_change_training(train_folders, data_dir, tmp_path, capsys):
    on = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=2))
    off = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=2,
                                   extra="diagnostics = false\n").replace("log_every = 1\n", "log_every = 1\n"))
    assert on.schedule.diagnostics and not off.schedule.diagnostics
    r_on = train(on, out=tmp_path / "on")
    r_off = train(off, out=tmp_path / "off")
    a = torch.load(r_on.last, weights_only=True)["model"]
    b = torch.load(r_off.last, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with (tmp_path / "on" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for s in range(4):
        assert 0.99 < float(rows[-1][f"s{s}_attn_entropy_rel"]) <= 1.0
        assert float(rows[-1][f"s{s}_logit_spread"]) > 0
        for p in "qkv":
            assert float(rows[-1][f"s{s}_{p}_update_ratio"]) > 0
    with (tmp_path / "off" / "train_log.csv").open() as f:
        assert "s0_attn_entropy_rel" not in f.readline()
    assert "attn H/Hmax" in capsys.readouterr().out


def test_probe_inputs_are_fixed_by_the_seed(train_folders):
    from cka_lab.data.datasets import SRPatchSet, load_images

    sets = [SRPatchSet(load_images([train_folders["clean"]]), 2, 24)]
    a, b, c = probe_inputs(sets, 2, 0), probe_inputs(sets, 2, 0), probe_inputs(sets, 2, 1)
    assert a[0].shape == (2, 3, 24, 24)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
