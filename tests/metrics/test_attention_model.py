"""AttentionDistance through the real EDT hooks: uniform attention reads as uniform, sharp attention as
sharp, pixel sizes per task, the accumulator protocol, and no hook left behind."""

from __future__ import annotations

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention import HEAD_COLUMNS, AttentionDistance, attention_findings
from cka_lab.models import create_edt


def scale_qk(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    """Multiply the q and k rows (the first 2C outputs) of every block's qkv projection by ``factor``."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(".qkv"):
                c = mod.out_features // 3
                mod.weight[: 2 * c] *= factor
                mod.bias[: 2 * c] *= factor
    return model


def crops(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run(model, task: str, x: torch.Tensor, **kw) -> AttentionDistance:
    with AttentionDistance(model, task=task, **kw) as ad, torch.no_grad():
        model.forward_task(x, task)
    return ad


@pytest.fixture(scope="module")
def uniform_edt():
    """A seeded SR+DN EDT-T with q = k = 0: every logit is 0, so attention is exactly uniform over the
    keys the mask allows (masked keys get e**-100 of a weight)."""
    torch.manual_seed(0)
    return scale_qk(create_edt("SRx2DNg25_EDTT").eval(), 0.0)


def test_exactly_uniform_attention_has_locality_and_entropy_rel_one_in_every_head(uniform_edt):
    df = run(uniform_edt, "x2", crops(2, 24, 1)).compute()
    assert list(df.columns[: len(HEAD_COLUMNS)]) == list(HEAD_COLUMNS)
    assert len(df) == 4 * 6 * 2 * 6 and set(df.kind) == {"plain", "shifted"}
    torch.testing.assert_close(torch.tensor(df.locality.values), torch.ones(len(df), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(df.entropy_rel.values), torch.ones(len(df), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(df.max_weight.values), torch.tensor(df.uniform_max_weight.values), rtol=1e-5, atol=0)
    assert ((df.locality_lower <= 1 + 1e-5) & (df.locality_upper >= 1 - 1e-5)).all()
    # Body 24x24: plain windows are whole (1/144); shifted 6x24 ones never are (see the baseline tests).
    assert df[df.kind == "plain"].uniform_max_weight.eq(1 / 144).all()
    assert df[df.kind == "shifted"].uniform_max_weight.sub((3 / 72 + 1 / 36) / 4).abs().max() < 1e-15
    assert (df.n == 2 * 24 * 24).all() and (df.n_crops == 2).all()
    findings = attention_findings(df)
    assert len(findings) == 1 and findings[0].startswith("Indistinguishable from uniform attention")


def test_downsampling_denoising_heads_measure_in_input_pixels(uniform_edt):
    sr = run(uniform_edt, "x2", crops(1, 24, 2)).compute()  # body 24x24, 1 input px per token
    dn = run(uniform_edt, "g25", crops(1, 96, 3)).compute()  # two stride-2 levels: body 24x24, 4 px per token
    assert (sr.uniform_distance * 4).sub(dn.uniform_distance).abs().max() < 1e-12
    assert dn.locality.sub(1).abs().max() < 1e-5 and dn.entropy_rel.sub(1).abs().max() < 1e-5
    torch.manual_seed(0)
    one_level = scale_qk(create_edt("DNg25_EDTT", depth=1, depths=(2,), num_heads=(6,)).eval(), 0.0)
    dn2 = run(one_level, "g25", crops(1, 48, 4))  # one stride-2 level: body 24x24, 2 px per token
    assert dn2.pixel_size == 2.0
    got = dn2.compute().set_index(["block", "direction"]).uniform_distance.groupby(level=[0, 1]).first()
    want = sr[sr.layer == 0].set_index(["block", "direction"]).uniform_distance.groupby(level=[0, 1]).first() * 2
    assert got.sub(want).abs().max() < 1e-12


def test_scaled_up_qk_weights_give_entropy_well_below_uniform_and_the_findings_say_so():
    torch.manual_seed(0)
    model = scale_qk(create_edt("SRx2_EDTT", depths=(2, 2), num_heads=(6, 6)).eval(), 30.0)
    ad = run(model, "x2", crops(4, 24, 5))
    heads, stages = ad.compute(), ad.summary()
    assert heads.entropy_rel.max() < 0.6 and (heads.entropy_rel_upper < 1).all()
    assert (heads.max_weight > 10 * heads.uniform_max_weight).all()
    assert len(stages) == 2 * 2 * 2 and (stages.n_heads == 6).all() and (stages.n_crops == 4).all()
    findings = attention_findings(stages)
    assert len(findings) == len(stages)  # one sentence per stage, kind and direction; none "indistinguishable"
    assert all("sharper than uniform" in f for f in findings)


def test_per_crop_sums_do_not_depend_on_the_batching():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    x = crops(4, 24, 6)
    whole = run(model, "x2", x)
    single = AttentionDistance(model, task="x2")
    with single, torch.no_grad():
        for i in range(4):
            model.forward_task(x[i : i + 1], "x2")
    a, b = whole.compute(), single.compute()
    for col in ("distance", "entropy", "max_weight", "locality_lower", "entropy_rel_upper"):
        torch.testing.assert_close(torch.tensor(a[col].values), torch.tensor(b[col].values), rtol=1e-5, atol=0)
    assert (a.n_crops == 4).all() and (b.n_crops == 4).all()


def test_update_with_a_synthetic_map_splits_crops_exactly():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    name = "body.layers.0.residual_group.blocks.1.attns.0"
    attn = torch.rand(3 * 4, 6, 144, 144, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).softmax(-1)
    batched, one_by_one = AttentionDistance(model), AttentionDistance(model)
    batched.update(name, attn, (24, 24))  # 3 crops of 24x24 (4 windows each)
    for c in range(3):
        one_by_one.update(name, attn[4 * c : 4 * c + 4], (24, 24))
    a, b = batched.compute(), one_by_one.compute()
    assert len(a) == 6 and a.kind.eq("shifted").all() and (a.n_crops == 3).all()
    for col in ("distance", "entropy", "max_weight", "locality", "locality_lower", "entropy_rel_upper"):
        torch.testing.assert_close(torch.tensor(a[col].values), torch.tensor(b[col].values), rtol=1e-12, atol=0)
    with pytest.raises(CkaLabError, match="do not tile"):
        batched.update(name, attn[:3], (24, 24))


def test_merge_of_two_halves_equals_one_accumulator():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    x = crops(4, 24, 7)
    whole = run(model, "x2", x)
    first, second = run(model, "x2", x[:2]), run(model, "x2", x[2:])
    merged = first.merge(second).compute()
    ref = whole.compute()
    for col in ("distance", "entropy_rel", "locality_lower", "locality_upper"):
        torch.testing.assert_close(torch.tensor(merged[col].values), torch.tensor(ref[col].values), rtol=1e-5, atol=0)
    assert (merged.n_crops == 4).all()
    first.reset()
    with pytest.raises(CkaLabError, match="no attention was recorded"):
        first.compute()
    with pytest.raises(CkaLabError, match="same attention modules"):
        first.merge(AttentionDistance(create_edt("SRx2_EDTT", depths=(2, 2), num_heads=(6, 6))))


def test_hooks_are_removed_when_the_with_block_raises():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    with pytest.raises(ValueError, match="boom"):
        with AttentionDistance(model, task="x2"), torch.no_grad():
            model.forward_task(crops(1, 24, 8), "x2")
            raise ValueError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    ad = AttentionDistance(model, task="x2")
    with ad, pytest.raises(CkaLabError, match="already recording"):
        ad.__enter__()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_summaries_never_mix_plain_and_shifted_blocks():
    torch.manual_seed(0)
    model = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    ad = run(model, "x2", crops(2, 24, 9))
    with pytest.raises(CkaLabError, match="group by 'kind'"):
        ad.summary(by=("layer", "direction"))
    assert ad.summary(by=("kind",)).kind.tolist() == ["plain", "shifted"]
