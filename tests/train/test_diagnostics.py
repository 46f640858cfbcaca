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
    KIND_STATS,
    STATS,
    row_entropy_spread,
    diagnostic_columns,
    head_row_stats,
    heldout_probe,
    probe_inputs,
    progress_text,
    summarise_heads,
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
    ent, spread, n = row_entropy_spread(masked, probs, ok)
    refs = [_reference_row(r, a) for r, a in zip(rows, allowed)]
    assert n == 3
    assert ent == pytest.approx(sum(r[0] for r in refs), abs=1e-12)
    assert spread == pytest.approx(sum(r[1] for r in refs), abs=1e-12)
    # uniform over the allowed keys is exactly 1, whatever the number of masked keys
    assert refs[1][0] == pytest.approx(1.0)
    # without the mask the -100 keys would count: a different (wrong) answer
    assert row_entropy_spread(masked, probs)[0] != pytest.approx(ent, abs=1e-3)


def test_rows_with_one_allowed_key_are_skipped():
    logits = torch.tensor([[0.0, -100.0], [0.1, 0.2]])
    ok = torch.tensor([[True, False], [True, True]])
    ent, spread, n = row_entropy_spread(logits, torch.softmax(logits, -1), ok)
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
    heads = probe.heads()
    # 4 stages x 6 blocks x 2 directions x 6 heads; plain and shifted blocks alike
    assert len(heads) == 4 * 6 * 2 * 6
    assert sorted(heads["kind"].unique()) == ["plain", "shifted"]
    assert heads["entropy_rel"].to_numpy() == pytest.approx(1.0, abs=1e-6)  # float32 probabilities
    assert heads["logit_spread"].to_numpy() == pytest.approx(0.0, abs=1e-12)
    summary = summarise_heads(heads)
    assert len(summary) == 8 and (summary["heads"] == 36).all() and (summary["learnt"] == 0).all()
    # had the masked keys counted, shifted blocks would be far below uniform
    assert any(float(m.attn_mask_h.lt(0).any()) for m in model.modules() if hasattr(m, "attn_mask_h"))
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_one_peaked_head_is_found_by_block_direction_and_head():
    """Only head 2 of the vertical strip of block 2 (plain) of stage 1 gets large q, k: that head alone
    is below uniform; the per-kind summary counts exactly 1 of 36 plain heads of stage 1 as learnt."""
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", image_size=24).eval()
    _zero_qk(model)
    blk = model.body.layers[1].residual_group.blocks[2]
    c, half, d = 60, 30, 5
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for part in (0, 1):  # q rows, k rows of the vertical half (channels 30:60), head 2
            rows = slice(part * c + half + 2 * d, part * c + half + 3 * d)
            blk.qkv.weight[rows] = 30.0 * torch.randn(d, c, generator=g)
        with AttentionProbe(model) as probe:
            model([torch.rand(2, 3, 24, 24, generator=g)])
    heads = probe.heads().set_index(["stage", "block", "direction", "head"])
    low = heads[heads["entropy_rel"] < 0.999]
    assert list(low.index) == [(1, 2, 1, 2)]
    assert low["entropy_rel"].iloc[0] < 0.95 and low["kind"].iloc[0] == "plain"
    s = summarise_heads(probe.heads()).set_index(["stage", "kind"])
    assert s.loc[(1, "plain"), "learnt"] == pytest.approx(1 / 36)
    assert s.loc[(1, "plain"), "sharpest"] == pytest.approx(low["entropy_rel"].iloc[0])
    assert s.loc[(1, "shifted"), "learnt"] == 0.0


def test_head_row_stats_sum_to_the_row_stats():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 7, 7, generator=g) * 2  # (B, nW, h, N, N)
    allowed = torch.rand(4, 7, 7, generator=g) > 0.3
    masked = logits + (~allowed).double()[None, :, None] * -100.0
    probs = torch.softmax(masked, -1)
    ent, spread, n = head_row_stats(masked, probs, allowed[None, :, None], 2)
    tot = row_entropy_spread(masked, probs, allowed[None, :, None])
    assert ent.shape == (5,)
    assert float(ent.sum()) == pytest.approx(tot[0], rel=1e-12)
    assert float(spread.sum()) == pytest.approx(tot[1], rel=1e-12)
    assert int(n.sum()) == tot[2]


def test_heldout_probe_crops_on_a_grid_images_in_turn():
    a = torch.arange(40 * 50.0).view(1, 1, 40, 50).expand(1, 3, 40, 50)
    b = torch.rand(1, 3, 24, 30)
    small = torch.zeros(1, 3, 10, 10)
    crops = heldout_probe([a, b, small], 24, per_image=4, limit=16)
    assert crops.shape == (6, 3, 24, 24)  # 2x2 from a, 1x2 from b (one row position), none from small
    assert torch.equal(crops[0], a[0, :, 5:29, 9:33])  # grid at 1/3 and 2/3 of the free range
    assert torch.equal(crops[1], b[0, :, :, 2:26])  # images taken in turn
    assert len(heldout_probe([a, b], 24, limit=3)) == 3
    with pytest.raises(ValueError):
        heldout_probe([small], 24)


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
    assert cols[:3] == [f"s0_{s}" for s in STATS] and len(cols) == 2 * (3 + 2 * len(KIND_STATS))
    assert "s1_plain_entropy_rel" in cols and "s1_shifted_learnt" in cols and "s0_plain_sharpest" in cols
    row = {c: 0.5 for c in cols}
    text = progress_text(row, 2)
    assert text.startswith("plain attn H/Hmax 0.500 0.500 | learnt 0.50 0.50") and "upd q 5.0e-01" in text


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
        for kind in ("plain", "shifted"):
            assert 0.99 < float(rows[-1][f"s{s}_{kind}_entropy_rel"]) <= 1.0
            assert float(rows[-1][f"s{s}_{kind}_logit_spread"]) > 0
            assert float(rows[-1][f"s{s}_{kind}_learnt"]) == 0.0
        for p in "qkv":
            assert float(rows[-1][f"s{s}_{p}_update_ratio"]) > 0
    with (tmp_path / "off" / "train_log.csv").open() as f:
        assert "s0_plain_entropy_rel" not in f.readline()
    assert not (tmp_path / "off" / "attn_heads.csv").exists()
    with (tmp_path / "on" / "attn_heads.csv").open() as f:
        heads = list(csv.DictReader(f))
    assert len(heads) == 2 * 4 * 6 * 2 * 6 and {h["iteration"] for h in heads} == {"1", "2"}
    out = capsys.readouterr().out
    assert "plain attn H/Hmax" in out and "attention diagnostics on x2:" in out


def test_probe_inputs_are_fixed_by_the_seed(train_folders):
    from cka_lab.data.datasets import SRPatchSet, load_images

    sets = [SRPatchSet(load_images([train_folders["clean"]]), 2, 24)]
    a, b, c = probe_inputs(sets, 2, 0), probe_inputs(sets, 2, 0), probe_inputs(sets, 2, 1)
    assert a[0].shape == (2, 3, 24, 24)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
