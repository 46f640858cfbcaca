"""EDT is the official model: same modules, same state dict, same numbers.

Every configuration in the fixtures' ``keys/`` is built and compared key by key; every numerical case
(official outputs of every head, padded and cropped, and stored intermediate activations) is
reproduced to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt, mirror_pad
from cka_lab.models.edt import window_mask

from .conftest import (
    CASES,
    KEY_FILES,
    case_json,
    case_model,
    keys_of,
    load_array,
    requires_fixtures,
    task_of,
)

pytestmark = requires_fixtures
ATOL = 1e-5


@pytest.mark.parametrize("config_name", [p.stem for p in KEY_FILES])
def test_every_official_configuration_has_the_official_state_dict_and_modules(config_name):
    ref = keys_of(config_name)
    model = create_edt(config_name)
    sd = model.state_dict()
    assert [(e["name"], e["shape"]) for e in ref["state_dict"]] == [(k, list(v.shape)) for k, v in sd.items()]
    assert all(str(sd[e["name"]].dtype) == f"torch.{e['dtype']}" for e in ref["state_dict"])
    assert model.num_parameters() == ref["total_parameter_count"]
    assert len([p for p in model.parameters()]) == ref["num_parameters_tensors"]
    official_modules = [(n, c) for n, c in ref["named_modules"] if n]
    ours = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    # cka_lab adds parameter-free identity taps (one per block, ``...blocks.j.attn_residual``) for analysis;
    # every other module is the official one, in the official order.
    taps = [(n, c) for n, c in ours if n.endswith(".attn_residual")]
    assert all(c == "Identity" for _, c in taps)
    assert len(taps) == sum(model.config.depths)
    assert [(n, c) for n, c in ours if not n.endswith(".attn_residual")] == official_modules
    assert list(model.tasks) == [
        {"sr": f"x{t['level']}", "dn": f"g{t['level']}", "dr": f"{t['level']}"}[t["task"]]
        for t in ref["tasks_in_forward_order"]
    ]
    assert [model.config.pad_multiple(t) for t in model.tasks] == [
        t["pad_multiple"] for t in ref["tasks_in_forward_order"]
    ]


def _heads(case):
    return [(case, h["tag"]) for h in case_json(case)["heads"]]


ALL_HEADS = [pair for case in CASES for pair in _heads(case)]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(case):
        if case not in cache:
            cache.clear()  # keep at most one big model alive
            cache[case] = case_model(case)
        return cache[case]

    return get


@pytest.mark.parametrize("case,tag", ALL_HEADS)
def test_forward_on_padded_input_equals_the_official_output(models, case, tag):
    model = models(case)
    x = load_array(case, f"inputs_padded/{tag}.npy")
    with torch.no_grad():
        y = model.forward_task(x, task_of(tag))
    ref = load_array(case, f"outputs_padded/{tag}.npy")
    assert y.shape == ref.shape
    assert (y - ref).abs().max().item() <= ATOL


@pytest.mark.parametrize("case,tag", ALL_HEADS)
def test_restore_pads_like_the_official_script_and_crops_back(models, case, tag):
    model = models(case)
    x = load_array(case, f"inputs/{tag}.npy")
    head = next(h for h in case_json(case)["heads"] if h["tag"] == tag)
    assert torch.equal(mirror_pad(x, head["pad_multiple"]), load_array(case, f"inputs_padded/{tag}.npy"))
    y = model.restore(x, task_of(tag))
    ref = load_array(case, f"outputs/{tag}.npy")
    assert y.shape == ref.shape
    assert (y - ref).abs().max().item() <= ATOL


def test_list_forward_takes_one_input_per_head_in_official_order(models):
    case = "edtt_srx2x3x4"
    model = models(case)
    xs = [load_array(case, f"inputs_padded/{t}.npy") for t in ("x2", "x3", "x4")]
    with torch.no_grad():
        ys = model(xs)
    for t, y in zip(("x2", "x3", "x4"), ys):
        assert (y - load_array(case, f"outputs_padded/{t}.npy")).abs().max().item() <= ATOL
    with pytest.raises(CkaLabError, match="takes 3 inputs"):
        model(xs[:1])


@pytest.mark.parametrize("tag", ["x2", "x3", "x4"])
def test_training_size_input_uses_the_stored_masks_and_matches_the_official_raw_output(models, tag):
    case = "edtt_srx2x3x4"
    model = models(case)
    x = load_array(case, f"raw_no_padding/input_{tag}.npy")
    assert x.shape[-1] == model.config.image_size
    with torch.no_grad():
        y = model.forward_task(x, tag)
    assert (y - load_array(case, f"raw_no_padding/output_{tag}.npy")).abs().max().item() <= ATOL


def test_shifted_window_masks_equal_the_official_buffers(models):
    model = models("edtt_srx2x3x4")
    blk = model.body.layers[0].residual_group.blocks[1]
    for which, window, shift in (("h", (6, 24), (3, 12)), ("v", (24, 6), (12, 3))):
        ref = load_array("edtt_srx2x3x4", f"attn_mask_example/attn_mask_{which}.npy")
        assert torch.equal(getattr(blk, f"attn_mask_{which}"), ref)
        assert torch.equal(window_mask(48, 48, window, shift), ref)


HOOKS = [h["module"] for h in case_json("edtt_srx2x3x4")["hooks"]] if "edtt_srx2x3x4" in CASES else []


@pytest.mark.parametrize("module_name", HOOKS)
def test_intermediate_activations_equal_the_official_ones(models, module_name):
    case = "edtt_srx2x3x4"
    model = models(case)
    module = dict(model.named_modules())[module_name]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model([load_array(case, f"inputs_padded/{t}.npy") for t in ("x2", "x3", "x4")])
    finally:
        handle.remove()
    ref = load_array(case, next(h["file"] for h in case_json(case)["hooks"] if h["module"] == module_name))
    assert seen[0].shape == ref.shape
    # The residual stream doubles per stage (|x| up to ~66 in the last one, where one float32 step is
    # 7.6e-6): 1e-5 is applied relative to the activation's scale, i.e. about one rounding step.
    assert (seen[0] - ref).abs().max().item() <= ATOL * max(1.0, ref.abs().max().item())


def test_training_forward_batches_heads_through_the_body_and_matches_eval(models):
    case = "edtt_srx2x3x4"
    model = models(case)
    xs = [load_array(case, f"raw_no_padding/input_{t}.npy") for t in ("x2", "x3", "x4")]
    model.train()
    try:
        for m in model.modules():  # stochastic depth off, to compare with eval
            if hasattr(m, "drop_prob"):
                m.drop_prob_saved, m.drop_prob = m.drop_prob, 0.0
        with torch.no_grad():
            ys = model(xs)
    finally:
        model.eval()
        for m in model.modules():
            if hasattr(m, "drop_prob_saved"):
                m.drop_prob = m.drop_prob_saved
    for t, y in zip(("x2", "x3", "x4"), ys):
        assert (y - load_array(case, f"raw_no_padding/output_{t}.npy")).abs().max().item() <= 1e-4


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 30), (24, 24), (25, 49)])
def test_restore_handles_any_size_down_to_one_pixel(models, h, w):
    model = models("edtt_srx2x3x4")
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    for task, s in (("x2", 2), ("x4", 4)):
        y = model.restore(x, task)
        assert y.shape == (1, 3, h * s, w * s)
        assert torch.isfinite(y).all()


def test_mirror_pad_repeats_the_edge_pixel_and_always_adds_at_least_one_multiple():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    assert mirror_pad(x, 4)[0, 0, 0].tolist() == [0, 1, 2, 2]
    y = torch.arange(4.0).view(1, 1, 1, 4)
    assert mirror_pad(y, 4).shape[-1] == 8  # an exact multiple still gets a full extra block
    assert mirror_pad(y, 4)[0, 0, 0].tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    tiny = torch.tensor([[[[7.0]]]])
    assert torch.equal(mirror_pad(tiny, 24), torch.full((1, 1, 24, 24), 7.0))


def test_restore_rejects_a_task_without_a_head_and_a_wrong_channel_count(models):
    model = models("edtt_srx2x3x4")
    with pytest.raises(CkaLabError, match="no head for task 'g25'.*x2, x3, x4"):
        model.restore(torch.rand(1, 3, 8, 8), "g25")
    with pytest.raises(CkaLabError, match="RGB"):
        model.restore(torch.rand(1, 4, 8, 8), "x2")


def test_body_input_that_is_not_a_window_multiple_is_refused(models):
    model = models("edtt_srx2x3x4")
    with pytest.raises(CkaLabError, match="not a multiple of 24"):
        model.forward_task(torch.rand(1, 3, 30, 48), "x2")


def test_drop_path_added_in_one_pass_is_the_module_added():
    from cka_lab.models.edt import DropPath

    dp = DropPath(0.5).train()
    shortcut, x = torch.randn(8, 5, 6), torch.randn(8, 5, 6, requires_grad=True)
    torch.manual_seed(3)
    fused = dp.add_to(shortcut, x)
    fused.sum().backward()
    g_fused = x.grad.clone()
    x.grad = None
    torch.manual_seed(3)
    plain = shortcut + dp(x)
    plain.sum().backward()
    assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-6) and torch.equal(g_fused, x.grad)  # same draws
    kept = (g_fused[:, 0, 0] != 0)
    assert 0 < kept.sum() < 8  # some samples dropped, some kept (seed 3)
    seen = []
    handle = dp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        dp.add_to(shortcut, x)
    finally:
        handle.remove()
    assert seen == [(8, 5, 6)]  # hooked: the module is called
    assert torch.equal(dp.eval().add_to(shortcut, x), shortcut + x)
