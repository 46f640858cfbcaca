"""Training images are drawn by patch count (or by a configured weight per source), not uniformly."""

from __future__ import annotations

import numpy as np
import pytest

from cka_lab.data.datasets import (
    ImageSource,
    NoisyPatchSet,
    SRPatchSet,
    TrainImage,
    image_weights,
    load_images,
    patch_counts,
)
from cka_lab.errors import CkaLabError
from cka_lab.train.config import config_to_dict, parse_config


def _images(weights=(None, None)):
    rng = np.random.default_rng(0)
    colour = [TrainImage(f"c/{i}", rng.integers(0, 256, (160, 200, 3), dtype=np.uint8), f"c{i}", 0, weights[0]) for i in range(2)]
    grey = [TrainImage(f"g/{i}", np.repeat(rng.integers(0, 256, (60, 60, 1), dtype=np.uint8), 3, 2), f"g{i}", 1, weights[1])
            for i in range(10)]
    return colour + grey


def test_patch_counts_and_weights_by_hand():
    assert patch_counts([(100, 80, 3), (30, 30)], 24).tolist() == [77 * 57, 7 * 7]
    assert image_weights([1, 3], [0, 1], [None, None]).tolist() == [0.25, 0.75]
    # source shares 1:3, split inside a source by patch count
    assert image_weights([1, 3, 4], [0, 0, 1], [1.0, 1.0, 3.0]).tolist() == pytest.approx([1 / 16, 3 / 16, 0.75])
    with pytest.raises(CkaLabError, match="give every image source a weight, or none"):
        image_weights([1, 1], [0, 1], [1.0, None])


def test_sr_grey_share_follows_the_patch_count_and_the_draws_follow_it():
    ps = SRPatchSet(_images(), 2, 24, augment=False)  # colour LR 100x80, grey LR 30x30
    grey = np.array([n.startswith("g/") for n in ps.names])
    expected = 10 * 49 / (10 * 49 + 2 * 77 * 57)
    assert ps.probabilities[grey].sum() == pytest.approx(expected, rel=1e-12)  # 5.3 %, not 10/12 = 83 %
    rng = np.random.default_rng(1)
    n = 20000
    share = np.mean([grey[ps.locate(rng)[0]] for _ in range(n)])
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_configured_source_weights_set_the_shares():
    ps = SRPatchSet(_images((1.0, 3.0)), 2, 24, augment=False)
    grey = np.array([n.startswith("g/") for n in ps.names])
    assert ps.probabilities[grey].sum() == pytest.approx(0.75)
    dn = NoisyPatchSet(_images((1.0, 1.0)), 25, 24, augment=False)
    assert dn.probabilities[grey].sum() == pytest.approx(0.5)


def test_weight_in_the_config(tmp_path):
    (tmp_path / "a").mkdir()
    cfg = parse_config('[model]\narch = "SRx2_EDTT"\n[data]\nsr = [{path = "a", weight = 2}, {path = "b", weight = 0.5}]\n',
                       source=tmp_path / "c.toml")
    assert [s.weight for s in cfg.data.sr] == [2.0, 0.5]
    assert config_to_dict(cfg)["data"]["sr"] == [{"path": "a", "reduce": 1, "weight": 2.0}, {"path": "b", "reduce": 1, "weight": 0.5}]
    plain = parse_config('[model]\narch = "SRx2_EDTT"\n[data]\nsr = ["a"]\n', source=tmp_path / "c.toml")
    assert config_to_dict(plain)["data"]["sr"] == [{"path": "a", "reduce": 1}]  # unchanged for old checkpoints
    with pytest.raises(CkaLabError, match=r"data.sr\[0\].weight must be > 0, got 0.0"):
        parse_config('[model]\narch = "SRx2_EDTT"\n[data]\nsr = [{path = "a", weight = 0}]\n', source=tmp_path / "c.toml")


def test_some_sources_weighted_is_one_clear_error(train_folders):
    with pytest.raises(CkaLabError) as exc:
        load_images([ImageSource(train_folders["clean"], 2, 1.0), ImageSource(train_folders["gray"])])
    assert "has no weight but others do" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow
def test_bundled_sr_config_draws_a_quarter_of_its_patches_from_the_grey_images(repo_root, data_dir):
    """The bundled SR x2 data (80 colour, 400 grey): 83 % grey when drawn by image, 37 % by patch count (24 px LR
    patches; the grey images are small, so they hold few of them)."""
    cfg = parse_config((repo_root / "checkpoints/configs/edtt_srx2_scratch.toml").read_text(), data_root=data_dir,
                       source=repo_root / "checkpoints/configs/edtt_srx2_scratch.toml")
    ps = SRPatchSet(load_images(cfg.data.sr), 2, cfg.data.patch_size, augment=False)
    grey = np.array([n.startswith("BSD400_gray/") for n in ps.names])
    assert grey.mean() == pytest.approx(400 / 480)
    assert 0.33 < ps.probabilities[grey].sum() < 0.41
