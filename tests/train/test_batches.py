"""Training batches are a pure function of (seed, iteration, rank, head), whatever loads them."""

from __future__ import annotations

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.train.batches import StepBatches, build_patch_sets, head_patch_size, step_loader
from cka_lab.train.config import parse_config
from cka_lab.train.loop import build_model
from tests.train.helpers import tiny_config


@pytest.fixture(scope="module")
def sr_dn_data(train_folders, data_dir):
    cfg = parse_config(tiny_config("SRx2DNg25_EDTT", train_folders, data_dir))
    model = build_model(cfg)
    return cfg, model, build_patch_sets(cfg, model.config)


def test_one_batch_per_head_with_the_official_patch_sizes(sr_dn_data):
    cfg, model, data = sr_dn_data
    assert data.tasks == ("x2", "g25")
    assert data.patch_sizes == [24, 96]  # DN patches are patch_size * 2**depth: same body input
    step = StepBatches(data.sets, 2, seed=0)[0]
    (lr, hr), (noisy, clean) = step
    assert lr.shape == (2, 3, 24, 24) and hr.shape == (2, 3, 48, 48)
    assert noisy.shape == clean.shape == (2, 3, 96, 96)
    assert head_patch_size(model.config, "g25", 48) == 192


def test_batches_depend_only_on_seed_iteration_rank_and_head(sr_dn_data):
    _, _, data = sr_dn_data
    a, b = StepBatches(data.sets, 2, seed=0), StepBatches(data.sets, 2, seed=0)
    for x, y in zip(a[5], b[5]):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert not torch.equal(a[5][0][1], a[6][0][1])  # another iteration
    assert not torch.equal(a[5][0][1], StepBatches(data.sets, 2, seed=1)[5][0][1])  # another seed
    assert not torch.equal(a[5][0][1], StepBatches(data.sets, 2, seed=0, rank=1)[5][0][1])  # another rank


def test_loader_with_workers_gives_the_same_batches_and_leaves_the_global_rng_alone(sr_dn_data):
    _, _, data = sr_dn_data
    batches = StepBatches(data.sets, 2, seed=0)
    state = torch.get_rng_state()
    plain = list(step_loader(batches, 3, 5, num_workers=0))
    worker = list(step_loader(batches, 3, 5, num_workers=1))
    assert torch.equal(torch.get_rng_state(), state)
    for s0, s1 in zip(plain, worker):
        for (x0, y0), (x1, y1) in zip(s0, s1):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_patch_size_must_fit_the_attention_window(train_folders, data_dir):
    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir).replace("patch_size = 24", "patch_size = 40"))
    with pytest.raises(CkaLabError, match="data.patch_size 40 is not a multiple of 24"):
        build_model(cfg)


def test_missing_training_folders_for_a_head_kind(train_folders, data_dir):
    text = tiny_config("DRls_EDTT", train_folders, data_dir).replace(f'dr = ["{train_folders["rain"]}"]', "dr = []")
    cfg = parse_config(text)
    with pytest.raises(CkaLabError, match=r"the model has DR heads \(L\) but \[data\] dr lists no training folders"):
        build_patch_sets(cfg, build_model(cfg).config)
