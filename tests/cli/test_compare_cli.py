"""``cka-lab compare`` and ``cka-lab layers`` from the command line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cka_lab.cli import main
from cka_lab.models import create_edt, save_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    save_checkpoint(d / "a.pt", create_edt("SRx2_EDTT"))
    torch.manual_seed(1)
    official = create_edt("SRx2_EDTT").state_dict()  # an official-layout file (bare state dict)
    torch.save(official, d / "b.pth")
    return d / "a.pt", d / "b.pth"


def test_compare_writes_heatmap_table_and_summary(capsys, ckpts, tmp_path):
    a, b = ckpts
    out = tmp_path / "cmp"
    code = main(["compare", str(a), str(b), "--layers", "body.layers.*", "--n-samples", "8",
                 "--batch-size", "4", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for name in ("cka.png", "cka.svg", "cka.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "cka.csv", index_col=0)
    assert table.shape == (4, 4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 8 and summary["arch_b"] == "SRx2_EDTT"
    assert "same-layer CKA" in text


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--batch-size", "2"], "at least 4"),
        (["--layers", "body.layerz.*"], "body.layerz"),
        (["--task", "g25"], "no head for task 'g25'"),
    ],
)
def test_compare_bad_options_get_one_line(capsys, ckpts, tmp_path, extra, expected):
    a, b = ckpts
    code = main(["compare", str(a), str(b), "--n-samples", "8", "--batch-size", "4", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0]


def test_compare_bad_files_and_folders_get_one_line(capsys, ckpts, tmp_path):
    a, _ = ckpts
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_text("junk")
    cases = [
        ([str(tmp_path / "missing.pt"), str(a)], "does not exist"),
        ([str(tmp_path / "junk.pt"), str(a)], "not a PyTorch checkpoint"),
        ([str(a), str(a), "--data", str(tmp_path / "empty")], "no images"),
    ]
    for argv, expected in cases:
        code = main(["compare", *argv, "--n-samples", "8", "--batch-size", "4", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err


def test_layers_lists_modules_with_output_shapes(capsys, ckpts):
    a, _ = ckpts
    assert main(["layers", str(a), "--match", "body.layers.*"]) == 0
    out = capsys.readouterr().out
    assert "body.layers.0.residual_group.blocks.1.attns.0.softmax" in out
    assert "1x576x60" in out  # tokens of a 24x24 input


def test_compare_with_the_authors_protocol_names_it_everywhere(capsys, ckpts, tmp_path):
    a, b = ckpts
    out = tmp_path / "paper"
    assert main(["compare", str(a), str(b), "--layers", "paper", "--estimator", "biased-full", "--n-samples", "8",
                 "--batch-size", "8", "--out", str(out)]) == 0
    protocol = "biased-full CKA, layers paper, output features, N=8"
    table = pd.read_csv(out / "cka.csv", index_col=0)
    assert table.shape == (59, 59) and table.index.name == f"layer ({protocol})"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["estimator"], summary["layer_set"], summary["features"]) == ("biased-full", "paper", "output")
    assert summary["protocol"] == protocol and protocol in capsys.readouterr().out
