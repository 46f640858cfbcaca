"""A few iterations of each training strategy: single task, multi-related, multi-unrelated, DN, DR, fine-tune."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt, load_model, read_checkpoint, save_checkpoint
from cka_lab.train.batches import StepBatches, build_patch_sets
from cka_lab.train.config import parse_config
from cka_lab.train.loop import build_model, train
from cka_lab.train.state import seed_everything
from tests.train.helpers import tiny_config


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _initial_weights(cfg):
    seed_everything(cfg.run.seed)
    return build_model(cfg).state_dict()


def _changed(before, after, prefix):
    keys = [k for k in after if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


@pytest.fixture(scope="module")
def pretrained(train_folders, data_dir, tmp_path_factory):
    """A 2-iteration multi-related SRx2x3x4 run (shared by the multi-task and fine-tune tests)."""
    cfg = parse_config(tiny_config("SRx2x3x4_EDTT", train_folders, data_dir))
    out = tmp_path_factory.mktemp("pretrain")
    return cfg, train(cfg, out=out)


def test_single_task_sr_trains_validates_and_writes_checkpoints(train_folders, data_dir, tmp_path):
    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, val=True))
    result = train(cfg, out=tmp_path)
    assert result.iteration == 2 and math.isfinite(result.final_loss)
    rows = _rows(tmp_path / "train_log.csv")
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"lr", "loss", "loss_x2", "sec_per_iter", "data_share", "patches_per_s"}
    val = _rows(tmp_path / "val_log.csv")
    assert [(r["iteration"], r["task"]) for r in val] == [("2", "x2")]
    assert 15 < float(val[0]["psnr"]) < 60 and result.val["x2"].images == 1
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt.format == "cka_lab/1" and ckpt.train["iteration"] == 2
    assert set(ckpt.train) >= {"optimizer", "scheduler", "rng", "config", "config_toml"}
    assert ckpt.train["config_toml"] == cfg.text
    model = load_model(tmp_path / "best.pt")
    assert model.name == "SRx2_EDTT"
    assert (tmp_path / "config.toml").read_text() == cfg.text


def test_multi_related_trains_every_head_every_step(pretrained):
    cfg, result = pretrained
    before = _initial_weights(cfg)
    after = read_checkpoint(result.last).state_dict
    for suffix in ("sr_x2", "sr_x3", "sr_x4"):
        assert _changed(before, after, f"head_{suffix}.") and _changed(before, after, f"tail_{suffix}.")
    assert _changed(before, after, "body.")
    row = _rows(result.out / "train_log.csv")[-1]
    assert all(float(row[f"loss_{t}"]) > 0 for t in ("x2", "x3", "x4"))
    assert float(row["loss"]) == pytest.approx(sum(float(row[f"loss_{t}"]) for t in ("x2", "x3", "x4")) / 3, rel=1e-4)


def test_multi_unrelated_heads_share_one_body_batch(train_folders, data_dir, tmp_path):
    cfg = parse_config(tiny_config("SRx2DNg15_EDTT", train_folders, data_dir))
    model = build_model(cfg).train()
    data = build_patch_sets(cfg, model.config)
    calls = []
    model.body.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    model([x for x, _ in StepBatches(data.sets, 2, 0)[0]])
    assert calls == [(4, 60, 24, 24)]  # SR 24 px and DN 96 px patches meet at 24 px in one body call
    result = train(cfg, out=tmp_path)
    row = _rows(tmp_path / "train_log.csv")[-1]
    assert result.iteration == 2 and float(row["loss_x2"]) > 0 and float(row["loss_g15"]) > 0


def test_denoising_with_downsampling_heads(train_folders, data_dir, tmp_path):
    cfg = parse_config(tiny_config("DNg25_EDTT", train_folders, data_dir, val=True))
    result = train(cfg, out=tmp_path)
    assert result.iteration == 2 and set(result.val) == {"g25"}
    assert 5 < result.val["g25"].psnr < 40


def test_deraining(train_folders, data_dir, tmp_path):
    cfg = parse_config(tiny_config("DRls_EDTT", train_folders, data_dir, val=True))
    result = train(cfg, out=tmp_path)
    assert result.iteration == 2 and set(result.val) == {"L"}


def test_finetune_keeps_the_pretrained_x2_branch_and_drops_the_others(pretrained, train_folders, data_dir, tmp_path):
    _, pre = pretrained
    extra = f'[finetune]\ninit = "{pre.last}"\ndrop = ["x3", "x4"]\n[optim]\nlr = 1e-5\n'
    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=1, extra=extra,
                                   model_extra='upsampler = "pixelshuffle"'))
    from cka_lab.train.finetune import init_from_checkpoint

    model = build_model(cfg)
    report = init_from_checkpoint(model, pre.last, drop=["x3", "x4"])
    src = read_checkpoint(pre.last).state_dict
    for k, v in model.state_dict().items():
        if k in src:
            assert torch.equal(v, src[k]), k
    assert report.dropped > 0 and not report.fresh
    result = train(cfg, out=tmp_path)
    assert result.iteration == 1


def test_finetune_non_strict_starts_dropped_tails_fresh(pretrained, train_folders, data_dir):
    """The official EDT-T case: x2x3x4 pixelshuffle tails -> x2 pixelshuffledirect tail."""
    _, pre = pretrained
    from cka_lab.train.finetune import init_from_checkpoint

    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir))
    model = build_model(cfg)
    assert model.config.upsampler == "pixelshuffledirect"
    with pytest.raises(CkaLabError, match="tail_sr_x2.2.0.weight has shape"):
        init_from_checkpoint(model, pre.last, drop=["x3", "x4"], strict=False)
    report = init_from_checkpoint(model, pre.last, drop=["x3", "x4", "tail_sr_x2.2", "tail_sr_x2.3"], strict=False)
    assert report.fresh == ["tail_sr_x2.2.0.weight", "tail_sr_x2.2.0.bias"]


def test_finetune_from_another_architecture_is_one_clear_error(train_folders, data_dir, tmp_path):
    other = save_checkpoint(tmp_path / "edts.pt", create_edt("SRx2_EDTS"))
    extra = f'[finetune]\ninit = "{other}"\n'
    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, extra=extra))
    with pytest.raises(CkaLabError) as err:
        train(cfg, out=tmp_path / "run")
    msg = str(err.value)
    assert "is a SRx2_EDTS checkpoint, another architecture than the model SRx2_EDTT" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "last.pt").exists()


def test_validation_images_in_the_training_data_are_refused(train_folders, data_dir, tmp_path):
    import shutil

    leaky = tmp_path / "leaky"
    shutil.copytree(train_folders["clean"], leaky)
    shutil.copy(data_dir / "sr/Set5/HR/x2/bird.png", leaky)
    text = tiny_config("SRx2_EDTT", train_folders, data_dir, val=True).replace(str(train_folders["clean"]), str(leaky))
    with pytest.raises(CkaLabError, match=r"training image leaky/bird.png is pixel-identical to validation image Set5/bird"):
        train(parse_config(text), out=tmp_path / "run")
