"""Malformed state dicts through ``infer_edt`` (issue 15): one CkaLabError line each, never a traceback or a hang."""

from __future__ import annotations

import pytest
import torch

from cka_lab.cli import main
from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt, infer_edt

FC1 = "body.layers.0.residual_group.blocks.0.mlp.fc1.weight"


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return dict(create_edt("SRx2_EDTT").state_dict())




CASES = {
    "bad head index": (lambda sd: {**sd, "head_sr_xab.0.weight": sd["head_sr_x2.0.weight"]}, "names no task"),
    "head without a level": (lambda sd: {**sd, "head_sr.0.weight": sd["head_sr_x2.0.weight"]}, "names no task"),
    "bad layer index": (lambda sd: {**sd, "body.layers.x.norm.weight": torch.ones(1)}, "is not a number"),
    "layer index with a gap": (lambda sd: {**sd, "body.layers.9.norm.weight": torch.ones(1)}, "is missing"),
    "huge layer index": (lambda sd: {**sd, "body.layers.99999999999.w": torch.ones(1)}, "is missing"),
    "bad block index": (lambda sd: {**sd, "body.layers.0.residual_group.blocks.b.w": torch.ones(1)}, "is not a number"),
    "0-dim embedding": (lambda sd: {**sd, "body.patch_embed.norm.weight": torch.tensor(1.0)}, "shape ()"),
    "0-dim head weight": (lambda sd: {**sd, "head_sr_x2.0.weight": torch.tensor(1.0)}, "shape ()"),
    "0-dim mlp weight": (lambda sd: {**sd, FC1: torch.tensor(1.0)}, "shape ()"),
    "no layers": (lambda sd: {k: v for k, v in sd.items() if not k.startswith("body.layers.")}, "no layers"),
    "missing mlp weight": (lambda sd: {k: v for k, v in sd.items() if k != FC1}, "is missing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_state_dict_is_one_line(base, case):
    make, expected = CASES[case]
    with pytest.raises(CkaLabError, match="not an EDT state dict") as info:
        infer_edt(make(base))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_intact_state_dict_still_infers(base):
    assert infer_edt(base).name == "SRx2_EDTT"


@pytest.mark.parametrize("case", ["bad head index", "0-dim embedding", "no layers"])
def test_the_cli_reports_them_with_exit_2(base, case, tmp_path, capsys):
    path = tmp_path / "bad.pth"
    torch.save(CASES[case][0](base), path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cka-lab: error: ") and "\n" not in err
