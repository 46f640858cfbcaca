"""Probe inputs depend on the seed and the crop index only: not on batch size, batch order or rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cka_lab.analysis.probing import (
    IndexedBatch,
    indexed_batches,
    model_input,
    prepare_probe,
    probe_size,
    shard_batches,
    training_patch,
)
from cka_lab.analysis.spec import ProbeSpec
from cka_lab.data.probes import bundled_images, probe_batches
from cka_lab.models import create_edt


def _inputs(batch_size: int, task: str) -> torch.Tensor:
    batches, _, _ = prepare_probe(ProbeSpec(patch=48, n_samples=32, seed=3, batch_size=batch_size),
                                  [(nn.Identity(), task)])
    return torch.cat([model_input(b.x, task, seed=3, first_index=b.first) for b in batches])


@pytest.mark.parametrize("task", ["g25", "x2"])
def test_probe_inputs_are_identical_for_batch_sizes_4_8_and_32(task):
    ref = _inputs(4, task)
    assert ref.shape == (32, 3, 48, 48)
    for bs in (8, 32):
        assert torch.equal(_inputs(bs, task), ref)


def test_the_noise_of_a_crop_does_not_depend_on_the_order_of_the_batches():
    batches, _, _ = prepare_probe(ProbeSpec(patch=48, n_samples=16, seed=1, batch_size=4), [(nn.Identity(), "g25")])
    forward = {b.first: model_input(b.x, "g25", seed=1, first_index=b.first) for b in batches}
    backward = {b.first: model_input(b.x, "g25", seed=1, first_index=b.first) for b in reversed(list(batches))}
    assert all(torch.equal(forward[k], backward[k]) for k in forward)


def test_the_probe_module_and_the_analysis_add_the_same_per_crop_noise():
    images = bundled_images("clean")
    clean = torch.cat(list(probe_batches(images, patch=24, n_samples=12, seed=5, batch_size=5)))
    noisy = torch.cat(list(probe_batches(images, patch=24, n_samples=12, seed=5, batch_size=3, task="g25")))
    assert torch.equal(noisy, model_input(clean, "g25", seed=5, first_index=0))


def test_a_model_probed_smaller_than_the_crops_sees_the_whole_crop_by_official_bicubic():
    from cka_lab.data.degrade import bicubic_downscale

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g).float() / 255
    assert torch.equal(model_input(x, "x2", seed=0, patch=8), bicubic_downscale(x, 2))  # the official LR


def test_models_are_probed_at_their_training_size_by_default():
    sr, dn = create_edt("SRx2_EDTT"), create_edt("DNg25_EDTT")
    assert training_patch(sr, "x2") == 48 and training_patch(dn, "g25") == 192  # 48 px body x 4 (downsampling)
    assert probe_size(sr, "x2", None) == 48 and probe_size(dn, "g25", None) == 192
    batches, sizes, _ = prepare_probe(ProbeSpec(n_samples=4, batch_size=4), [(sr, "x2"), (dn, "g25")])
    assert batches[0].x.shape[-1] == 192 and sizes == [48, None]  # SR gets the crop downscaled x4: same content
    batches, sizes, _ = prepare_probe(ProbeSpec(n_samples=4, batch_size=4), [(sr, "x2"), (sr, "x2")])
    assert batches[0].x.shape[-1] == 96 and sizes == [48, 48]  # SR alone: the x2 LR of a 96 px HR crop


def test_shards_are_contiguous_blocks_of_whole_batches_in_order():
    batches = list(indexed_batches(torch.zeros(4, 1) for _ in range(5)))
    assert [b.first for b in batches] == [0, 4, 8, 12, 16]
    shards = [shard_batches(batches, r, 2) for r in range(2)]
    assert [b.first for s in shards for b in s] == [0, 4, 8, 12, 16]
    assert all(isinstance(b, IndexedBatch) for s in shards for b in s)
