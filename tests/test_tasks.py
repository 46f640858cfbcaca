"""A task key is parsed in one place (cka_lab.tasks); EDT module names are known in one (cka_lab.models.names)."""

from __future__ import annotations

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt
from cka_lab.models.names import attention_site, qkv_stage, short_layer_name, stage_of, stage_starts
from cka_lab.tasks import TASK_KEYS, parse_task, task_kind


@pytest.mark.parametrize("key, kind, level, scale, sigma", [
    ("x2", "sr", 2, 2, None), ("x4", "sr", 4, 4, None), ("g15", "dn", 15, 1, 15.0), ("g50", "dn", 50, 1, 50.0),
    ("L", "dr", "L", 1, None), ("H", "dr", "H", 1, None),
])
def test_a_key_gives_kind_level_scale_and_sigma(key, kind, level, scale, sigma):
    t = parse_task(key)
    assert (t.key, t.kind, t.level, t.scale, t.sigma) == (key, kind, level, scale, sigma)
    assert task_kind(key) == kind


@pytest.mark.parametrize("key", ["", "x", "x0", "g0", "gx", "M", "sr_x2", "x2 x3", None])
def test_an_unknown_key_is_one_line(key):
    with pytest.raises(CkaLabError, match="unknown task") as err:
        parse_task(key)
    assert "\n" not in str(err.value) and ", ".join(TASK_KEYS) in str(err.value)


@pytest.mark.parametrize("name, stride", [("SRx2_EDTT", 1), ("DNg15_EDTT", 4), ("DNg15_EDTTSF", 1), ("DRlshs_EDTT", 4)])
def test_the_token_stride_is_the_heads_downsampling(name, stride):
    cfg = create_edt(name).config
    for task in cfg.tasks:
        assert cfg.token_stride(task) == parse_task(task).token_stride(cfg.depth, cfg.sf) == stride


def test_edt_module_names_are_read_in_one_place():
    model = create_edt("SRx2_EDTT")
    names = [n for n, _ in model.named_modules()]
    sites = [attention_site(n) for n in names if attention_site(n)]
    assert sites[0] == (0, 0, 0) and len(sites) == sum(model.config.depths) * 2
    assert {qkv_stage(n) for n in names if qkv_stage(n) is not None} == set(range(len(model.config.depths)))
    assert stage_of("body.layers.3.residual_group.blocks.1") == 3 and stage_of("head_sr_x2.0") is None
    assert stage_starts(["head_sr_x2.0", "body.layers.0", "body.layers.1.x"]) == [1, 2]
    assert short_layer_name("body.layers.2") == "s2" and short_layer_name("tail_dn_g25.3") == "tail.3"
