"""AnalysisSpec and the layer sets: validation in one line, the EDT authors' layers counted."""

from __future__ import annotations

import pytest
from torch import nn

from cka_lab.analysis.spec import AnalysisSpec, ProbeSpec
from cka_lab.errors import CkaLabError
from cka_lab.features.layersets import paper_layers, resolve_layer_spec
from cka_lab.models import create_edt


def test_paper_layers_take_output_features_and_name_the_protocol():
    spec = AnalysisSpec(layers="paper", estimator="biased-full", probe=ProbeSpec(n_samples=64))
    assert spec.features == "output"
    assert spec.label() == "biased-full CKA, layers paper, output features, N=64"
    assert AnalysisSpec().features == "update" and AnalysisSpec().layers == "default"
    assert spec.replace(layers="default").features == "update"


@pytest.mark.parametrize("kwargs,expected", [
    (dict(estimator="biased-ful"), "did you mean 'biased-full'"),
    (dict(estimator="kernel"), "unknown estimator 'kernel'"),
    (dict(features="outputs"), "did you mean 'output'"),
    (dict(layers="paper", features="update"), "--layers paper takes output features"),
    (dict(layers=()), "at least one module"),
    (dict(probe=ProbeSpec(), confidence=1.5), "confidence"),
])
def test_bad_specs_are_refused_in_one_line(kwargs, expected):
    with pytest.raises(CkaLabError, match=expected) as err:
        AnalysisSpec(**kwargs)
    assert "\n" not in str(err.value)


def test_probe_settings_are_checked():
    with pytest.raises(CkaLabError, match="n_samples"):
        ProbeSpec(n_samples=0)


@pytest.mark.parametrize("arch,task", [("SRx2_EDTT", "x2"), ("DNg25_EDTT", "g25")])
def test_the_paper_set_of_edt_t_has_the_authors_layer_count(arch, task):
    model = create_edt(arch)
    layers = paper_layers(model, task)
    cfg = model.config
    head = 1 + cfg.depth + 1  # first conv, one ResBlockDown per level, last conv
    body = sum(2 * d + 1 for d in cfg.depths)  # attention- and FFN-residual per block, stage output
    tail = cfg.depth + 1  # one block per level, then the upsampler (SR) or the last conv (DN)
    assert len(layers) == head + body + tail == 4 + 4 * 13 + 3 == 59
    assert layers[4:7] == ["body.layers.0.residual_group.blocks.0.attn_residual",
                           "body.layers.0.residual_group.blocks.0", "body.layers.0.residual_group.blocks.1.attn_residual"]
    assert layers[4 + 12] == "body.layers.0"
    assert all(n.startswith(f"head_{cfg.head(task).suffix}.") for n in layers[:4])
    assert all(n.startswith(f"tail_{cfg.head(task).suffix}.") for n in layers[-3:])
    assert len(set(layers)) == len(layers)
    modules = dict(model.named_modules())
    assert all(n in modules for n in layers)


def test_unknown_layer_sets_and_models_without_edt_blocks_get_one_line():
    sr = create_edt("SRx2_EDTT")
    with pytest.raises(CkaLabError, match="unknown layer set 'papr': did you mean 'paper'"):
        resolve_layer_spec(sr, "papr")
    with pytest.raises(CkaLabError, match="--layers paper needs an EDT model"):
        resolve_layer_spec(nn.Sequential(nn.Conv2d(3, 3, 1)), "paper")
    assert resolve_layer_spec(sr, "default")[0] == "body.layers.0.residual_group.blocks.0"
    assert resolve_layer_spec(sr, "body") == ["body"]  # a module name is not a layer set
