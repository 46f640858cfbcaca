"""Weights files: official layouts and cka_lab's own, architecture inference, and refusals.

Every file is read with ``weights_only=True``; bad files get one line that says what to do.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt, infer_edt, load_model, load_weights, read_checkpoint, save_checkpoint
from cka_lab.models.checkpoint import atomic_torch_save

from .conftest import KEY_FILES, case_model, keys_of, load_array, recipe_state_dict, requires_fixtures

pytestmark = requires_fixtures


@pytest.fixture(scope="module")
def edtt():
    return case_model("edtt_srx2x3x4")


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, edtt):
    """An official-layout .pth: the bare state dict, mask buffers included."""
    path = tmp_path_factory.mktemp("official") / "SRx2x3x4_EDTT_ImageNet200K.pth"
    torch.save(edtt.state_dict(), path)
    return path


@pytest.mark.parametrize("config_name", [p.stem for p in KEY_FILES])
def test_infer_edt_recovers_every_official_configuration(config_name):
    model = create_edt(config_name)
    cfg = infer_edt(model.state_dict())
    assert cfg == model.config
    assert len(cfg.heads) == len(keys_of(config_name)["tasks_in_forward_order"])


def test_an_official_file_loads_without_naming_its_architecture(official_file):
    model = load_model(official_file)
    assert model.name == "SRx2x3x4_EDTT"
    x = load_array("edtt_srx2x3x4", "inputs_padded/x2.npy")
    with torch.no_grad():
        y = model.forward_task(x, "x2")
    assert (y - load_array("edtt_srx2x3x4", "outputs_padded/x2.npy")).abs().max() <= 1e-5


def test_files_without_mask_buffers_load_and_masks_are_recomputed(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(recipe_state_dict("SRx2x3x4_EDTT_ImageNet200K"), path)
    model = load_model(path)
    x = load_array("edtt_srx2x3x4", "raw_no_padding/input_x3.npy")
    with torch.no_grad():
        y = model.forward_task(x, "x3")
    assert (y - load_array("edtt_srx2x3x4", "raw_no_padding/output_x3.npy")).abs().max() <= 1e-5


@pytest.mark.parametrize("wrap", ["params", "params_ema", "state_dict", "model", "module."])
def test_common_wrappers_and_the_data_parallel_prefix_are_accepted(tmp_path, edtt, wrap):
    sd = edtt.state_dict()
    obj = OrderedDict(("module." + k, v) for k, v in sd.items()) if wrap == "module." else {wrap: sd}
    torch.save(obj, tmp_path / "w.pth")
    assert load_model(tmp_path / "w.pth").name == "SRx2x3x4_EDTT"


def test_drop_loads_one_branch_of_a_multi_task_model_like_the_official_filter_list(official_file, edtt):
    single = create_edt("SRx2_EDTT", upsampler="pixelshuffle").eval()
    load_weights(single, official_file, drop=("x3", "x4"))
    x = load_array("edtt_srx2x3x4", "inputs_padded/x2.npy")
    with torch.no_grad():
        assert torch.equal(single.forward_task(x, "x2"), edtt.forward_task(x, "x2"))


def test_a_checkpoint_of_another_architecture_names_the_first_mismatching_key(official_file):
    with pytest.raises(CkaLabError) as err:
        load_weights(create_edt("SRx2x3x4_EDTS"), official_file)
    msg = str(err.value)
    assert "head_sr_x2.0.weight" in msg and "(8, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg
    assert "SRx2x3x4_EDTT" in msg and "\n" not in msg


def test_extra_heads_in_the_checkpoint_are_reported_with_the_way_out(official_file):
    with pytest.raises(CkaLabError, match="head_sr_x3.*drop="):
        load_weights(create_edt("SRx2_EDTT", upsampler="pixelshuffle"), official_file)


def test_cka_lab_checkpoints_round_trip_without_mask_buffers(tmp_path, edtt):
    path = save_checkpoint(tmp_path / "m.pt", edtt, meta={"source": "test"})
    ckpt = read_checkpoint(path)
    assert ckpt.format == "cka_lab/1" and ckpt.config == edtt.config
    assert not any("attn_mask" in k for k in ckpt.state_dict)
    model = load_model(path)
    assert model.checkpoint_info["source"] == "test"
    for (k, a), b in zip(model.state_dict().items(), edtt.state_dict().values()):
        assert torch.equal(a, b), k
    assert os.path.getsize(path) < 6_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_an_interrupted_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt  # dies in the middle of pickling

    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"v": torch.zeros(3), "x": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_missing_file_a_folder_and_a_non_checkpoint_get_one_line(tmp_path):
    with pytest.raises(CkaLabError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CkaLabError, match="folder"):
        read_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CkaLabError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "hparams.pt")
    with pytest.raises(CkaLabError, match="no state dict"):
        read_checkpoint(tmp_path / "hparams.pt")
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CkaLabError, match="not an EDT state dict"):
        load_model(tmp_path / "other.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"head_sr_x2.0.weight": torch.ones(1), "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CkaLabError, match="refusing to load.*could run code"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_weights_with_nan_are_refused(tmp_path, edtt):
    sd = edtt.state_dict()
    sd["body.norm.weight"] = sd["body.norm.weight"].clone().fill_(float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CkaLabError, match="NaN.*body.norm.weight"):
        load_model(tmp_path / "nan.pth")
