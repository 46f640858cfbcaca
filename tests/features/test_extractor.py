"""FeatureExtractor: forward hooks by module name, features flattened to (B, D)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cka_lab.errors import CkaLabError
from cka_lab.features import FeatureExtractor, list_layers, resolve_layers


class TokenBlock(nn.Module):
    """(B, L, C) -> ((B, L, C), attention (B, L, L)): a tuple output like attention blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x), x @ x.transpose(1, 2)


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TokenBlock(8) for _ in range(3)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens)[0]
        return tokens


class TwoHeadNet(nn.Module):
    """A conv stem, a token body shared by two heads (run once per head, like EDT's multi-task body)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = Body()
        self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stem(x)  # (B, 8, H, W)
        tokens = maps.flatten(2).transpose(1, 2)  # (B, H*W, 8)
        outs = [head(self.body(tokens * (i + 1))) for i, head in enumerate(self.heads)]
        return torch.stack(outs).sum(0)


@pytest.fixture()
def net() -> TwoHeadNet:
    torch.manual_seed(0)
    return TwoHeadNet()


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(4, 3, 5, 6)


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_maps_and_token_outputs_are_flattened_to_batch_by_features(net, x):
    with FeatureExtractor(net, ["stem", "body.layers.0"]) as ext:
        net(x)
    assert ext.features["stem"].shape == (4, 8 * 5 * 6)  # (B, C, H, W) -> (B, C*H*W)
    assert ext.features["body.layers.0"].shape == (4, 30 * 8)  # first of the tuple: (B, L, C) -> (B, L*C)


def test_features_equal_the_module_output_detached_in_its_dtype(net, x):
    with FeatureExtractor(net, "stem") as ext:
        out = net.stem(x)
        net(x)
    feat = ext.features["stem"]
    torch.testing.assert_close(feat, out.detach().flatten(1))
    assert not feat.requires_grad and feat.dtype == torch.float32


def test_hooks_are_gone_after_the_block(net, x):
    before = all_hooks(net)
    with FeatureExtractor(net, ["stem", "body.layers.*"]):
        assert all_hooks(net) > before
        net(x)
    assert all_hooks(net) == before == 0
    assert all(not m._forward_hooks for m in net.modules())


def test_hooks_are_gone_after_an_exception_in_the_block(net, x):
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureExtractor(net, ["stem", "body.layers.1"]):
            net(x)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_unknown_layer_fails_before_any_forward_and_lists_close_matches(net):
    calls = []
    net.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(CkaLabError) as err:
        FeatureExtractor(net, ["body.layer.1"])
    message = str(err.value)
    assert "body.layers.1" in message and "close matches" in message and "\n" not in message
    assert calls == []


def test_pattern_that_matches_nothing_is_an_error(net):
    with pytest.raises(CkaLabError, match="matches no layer"):
        FeatureExtractor(net, "body.blocks.*")


def test_glob_pattern_expands_to_matching_modules_in_named_modules_order(net):
    assert resolve_layers(net, "body.layers.*") == ["body.layers.0", "body.layers.1", "body.layers.2"]
    assert resolve_layers(net, "heads.[01]") == ["heads.0", "heads.1"]


def test_single_star_stays_within_one_name_component_and_double_star_crosses(net):
    assert "body.layers.0.proj" not in resolve_layers(net, "body.layers.*")
    assert resolve_layers(net, "body.**.proj") == [f"body.layers.{i}.proj" for i in range(3)]


def test_names_and_patterns_combine_without_duplicates(net):
    assert resolve_layers(net, ["body.layers.1", "body.layers.*", "stem"]) == [
        "body.layers.1",
        "body.layers.0",
        "body.layers.2",
        "stem",
    ]


def test_a_module_called_twice_per_forward_keeps_the_first_call_by_default(net, x):
    with FeatureExtractor(net, "body.layers.2") as first, FeatureExtractor(net, "body.layers.2", call_index=1) as second:
        net(x)
    with torch.no_grad():
        tokens = net.stem(x).flatten(2).transpose(1, 2)
        want_first = net.body(tokens).flatten(1)
        want_second = net.body(tokens * 2).flatten(1)
    torch.testing.assert_close(first.features["body.layers.2"], want_first)
    torch.testing.assert_close(second.features["body.layers.2"], want_second)


def test_call_index_minus_one_keeps_the_last_call(net, x):
    with FeatureExtractor(net, "body.layers.2", call_index=1) as second, FeatureExtractor(net, "body.layers.2", call_index=-1) as last:
        net(x)
    torch.testing.assert_close(last.features["body.layers.2"], second.features["body.layers.2"])


def test_each_forward_pass_starts_fresh_features(net, x):
    with FeatureExtractor(net, "stem") as ext:
        net(x)
        first = ext.features
        net(x[:2])
    assert first["stem"].shape[0] == 4 and ext.features["stem"].shape[0] == 2


def test_calls_outside_a_call_of_the_model_keep_the_latest_output(net, x):
    """E.g. model.forward_task(x, task) called directly: no pass boundaries, every call overwrites."""
    with FeatureExtractor(net, "stem") as ext:
        net.forward(x)
        net.forward(2 * x[:3])
    torch.testing.assert_close(ext.features["stem"], net.stem(2 * x[:3]).detach().flatten(1))


def test_a_forward_that_raises_ends_its_pass(net, x):
    with FeatureExtractor(net, "body.layers.0") as ext:
        with pytest.raises(RuntimeError):
            net(x[:, :2])  # wrong channel count: the stem raises
        net.forward(x)  # outside model(...) now: every call is recorded
        net.forward(x[:3])
    assert ext.features["body.layers.0"].shape[0] == 3


def test_layers_attribute_holds_the_resolved_names(net):
    assert FeatureExtractor(net, "heads.*").layers == ["heads.0", "heads.1"]


def test_list_layers_reports_names_classes_shapes_and_calls(net, x):
    net.train()
    table = list_layers(net, x)
    assert list(table.columns) == ["name", "class", "output_shape", "calls"]
    assert table["name"].tolist() == [n for n, _ in net.named_modules() if n]
    row = table.set_index("name")
    assert row.loc["stem", "class"] == "Conv2d" and row.loc["stem", "output_shape"] == (4, 8, 5, 6)
    assert row.loc["body.layers.0", "output_shape"] == (4, 30, 8)
    assert row.loc["body", "calls"] == 2
    assert net.training and all(m.training for m in net.modules())
    assert all_hooks(net) == 0
