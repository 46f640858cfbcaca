"""Training configs: TOML -> typed dataclasses, official defaults, path rules, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.train.config import (
    ImageSource,
    TrainConfig,
    config_differences,
    config_to_dict,
    load_config,
    parse_config,
)

MINIMAL = '[model]\narch = "SRx2_EDTT"\n'


def test_minimal_config_has_the_official_optimiser_defaults():
    cfg = parse_config(MINIMAL)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.arch == "SRx2_EDTT"
    assert cfg.optim.lr == 2e-4 and cfg.optim.betas == (0.9, 0.99) and cfg.optim.weight_decay == 0.0
    assert cfg.optim.gamma == 0.5
    assert cfg.data.patch_size == 48 and cfg.data.augment
    assert cfg.finetune.init is None and cfg.finetune.strict


def test_sections_are_frozen_dataclasses():
    cfg = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL + "[optim]\nlrr = 1e-4\n", "[optim] has no key 'lrr' (did you mean 'lr'?)"),
        (MINIMAL + "[schedul]\niterations = 3\n", "unknown section 'schedul' (did you mean 'schedule'?)"),
        (MINIMAL + "drop_path = 0.0\n", "[model] has no key 'drop_path' (did you mean 'drop_path_rate'?)"),
        (MINIMAL + "[data]\npatch_sise = 48\n", "[data] has no key 'patch_sise' (did you mean 'patch_size'?)"),
        (MINIMAL + "[finetune]\ndorp = ['x3']\n", "[finetune] has no key 'dorp' (did you mean 'drop'?)"),
    ],
)
def test_unknown_key_names_section_key_and_close_match(text, expected):
    with pytest.raises(CkaLabError) as err:
        parse_config(text)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL + "[schedule]\nbatch_size = 'four'\n", "schedule.batch_size must be an integer"),
        (MINIMAL + "[optim]\nbetas = [0.9]\n", "optim.betas must be a list of 2 values"),
        (MINIMAL + "[schedule]\niterations = 0\n", "schedule.iterations must be >= 1"),
        ('[model]\narch = "SRx2_EDTX"\n', "unknown EDT architecture 'SRx2_EDTX'"),
        ("[run]\nseed = 1\n", "missing [model] section"),
        (MINIMAL + "scales = [2, 3]\n", "comes from the architecture name"),
        (MINIMAL + "[data\n", "is not valid TOML"),
    ],
)
def test_bad_values_give_one_line(text, expected):
    with pytest.raises(CkaLabError) as err:
        parse_config(text)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_model_overrides_are_kept_and_checked():
    cfg = parse_config(MINIMAL + 'upsampler = "pixelshuffle"\ndrop_path_rate = 0.0\n')
    assert cfg.model.override_dict() == {"drop_path_rate": 0.0, "upsampler": "pixelshuffle"}


def test_relative_paths_resolve_against_the_config_folder_and_data_root(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.toml"
    path.write_text(
        MINIMAL
        + '[run]\nout = "../runs/a"\n'
        + '[data]\nroot = "../data"\nsr = [{path = "train/Sun", reduce = 2}, "train/gray"]\ndr = ["derain/H"]\n'
        + '[val]\nsr = "sr/Set5"\n'
        + '[finetune]\ninit = "pre.pt"\n'
    )
    cfg = load_config(path)
    data = (tmp_path / "data").resolve()
    assert cfg.run.out == tmp_path / "cfg" / "../runs/a"
    assert cfg.data.root == data
    assert cfg.data.sr == (ImageSource(data / "train/Sun", 2), ImageSource(data / "train/gray", 1))
    assert cfg.data.dr == (data / "derain/H",)
    assert cfg.val.sr == data / "sr/Set5"
    assert cfg.finetune.init == tmp_path / "cfg" / "pre.pt"
    assert cfg.run.name == "run"  # the file's stem
    # --data-root replaces [data] root; the set names follow it
    moved = load_config(path, data_root=tmp_path / "elsewhere")
    assert moved.data.sr[0].path == (tmp_path / "elsewhere").resolve() / "train/Sun"
    # ... and the run's identity (for --resume) does not change
    assert config_differences(config_to_dict(cfg), config_to_dict(moved)) == []


def test_environment_variables_expand_with_defaults(tmp_path, monkeypatch):
    text = MINIMAL + '[data]\nroot = "${CKA_LAB_TEST_DATA:-/nowhere}"\n'
    monkeypatch.delenv("CKA_LAB_TEST_DATA", raising=False)
    assert parse_config(text).data.root == Path("/nowhere")
    monkeypatch.setenv("CKA_LAB_TEST_DATA", str(tmp_path))
    assert parse_config(text).data.root == tmp_path.resolve()
    with pytest.raises(CkaLabError, match=r"\$\{CKA_LAB_NOT_SET\} is not set"):
        parse_config(MINIMAL + '[data]\nroot = "${CKA_LAB_NOT_SET}"\n')


def test_milestones_below_one_are_fractions_of_the_run():
    cfg = parse_config(MINIMAL + "[schedule]\niterations = 1000\n[optim]\nmilestones = [0.5, 0.8, 900]\n")
    assert cfg.resolved_milestones() == [500, 800, 900]


def test_config_differences_ignore_resumable_keys():
    a = config_to_dict(parse_config(MINIMAL + "[schedule]\niterations = 10\n"))
    b = config_to_dict(parse_config(MINIMAL + "[schedule]\niterations = 20\n[optim]\nlr = 1e-3\n"))
    assert config_differences(a, b) == ["optim.lr is 0.0002 there but 0.001 here"]


def test_bundled_configs_parse(repo_root, data_dir):
    folder = repo_root / "checkpoints" / "configs"
    files = sorted(folder.glob("*.toml"))
    assert {f.name for f in files} >= {
        "edtt_srx2_scratch.toml",
        "edtt_srx2x3x4_pretrain.toml",
        "edtt_srx2_finetune.toml",
        "edtt_dng25_scratch.toml",
        "edtt_dn_pretrain.toml",
        "edtt_dng25_finetune.toml",
    }
    for f in files:
        cfg = load_config(f)
        for src in cfg.data.sr + cfg.data.dn:
            assert src.path.is_dir(), f"{f.name}: {src.path}"
        for p in (cfg.val.sr, cfg.val.dn, cfg.val.dr):
            assert p is None or p.is_dir(), f"{f.name}: {p}"


def test_bundled_finetune_configs_fit_their_pretraining(repo_root, tmp_path):
    """Each fine-tune config starts from the bundled export of its pre-training run, and its
    drop/strict/upsampler choice loads both that file and the model the pre-training config makes."""
    from cka_lab.models import save_checkpoint
    from cka_lab.train.finetune import init_from_checkpoint
    from cka_lab.train.loop import build_model

    folder = repo_root / "checkpoints" / "configs"
    pairs = [("edtt_srx2_finetune.toml", "edtt_srx2x3x4_pretrain.toml"), ("edtt_dng25_finetune.toml", "edtt_dn_pretrain.toml")]
    for fine_name, pre_name in pairs:
        fine, pre = load_config(folder / fine_name), load_config(folder / pre_name)
        assert fine.finetune.init.resolve() == (repo_root / "checkpoints" / f"{pre.run.name}.pt").resolve()
        fresh = save_checkpoint(tmp_path / f"{pre_name}.pt", build_model(pre))
        for ckpt in (fresh, fine.finetune.init):
            report = init_from_checkpoint(build_model(fine), ckpt, fine.finetune.drop, fine.finetune.strict)
            assert not report.fresh and report.loaded > 0
