"""Issue 24: a checkpoint is checked before it is read (regular file, size), and a damaged one -- any
entry of the wrong type -- is one line, never a traceback or torch's advice to load it unsafely."""

from __future__ import annotations

import os
import pickle
import threading
import warnings

import pytest
import torch

from cka_lab.cli import main
from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt, load_model, save_checkpoint
from cka_lab.models.checkpoint import read_checkpoint

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), drop_path_rate=0.0)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "a.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_edt("SRx2_EDTT", **TINY))
    return path


def _variant(good, tmp_path, name, **changes):
    obj = torch.load(good, weights_only=True)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            obj[section] = {**obj[section], field: value}
        else:
            obj[section] = value
    path = tmp_path / f"{name}.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"meta": [1, 2]}, "its 'meta' is a list, expected a table"),
    ({"meta": "hello"}, "its 'meta' is a string, expected a table"),
    ({"meta": 7}, "its 'meta' is an integer, expected a table"),
    ({"config": [1]}, "its 'config' is a list, expected a table"),
    ({"train": "x"}, "its 'train' is a string, expected a table"),
    ({"meta__git_commit": 5}, "meta.git_commit is an integer"),
    ({"meta__val": {"x2": {"psnr": "high"}}}, "meta.val.x2.psnr is a string"),
    ({"config__embed_dim": "x"}, "config.embed_dim is a string"),
    ({"config__depths": [3]}, "its config says embed_dim 12, depths [3] but its weights have embed_dim 12, depths [2]"),
    ({"config__mlp_ratio": float("nan")}, "config.mlp_ratio is a number nan"),
])
def test_a_damaged_entry_is_one_line(good, tmp_path, changes, message):
    path = _variant(good, tmp_path, "bad", **changes)
    with pytest.raises(CkaLabError) as err:
        load_model(path)
    text = str(err.value)
    assert "is a damaged cka_lab checkpoint" in text and message in text and "\n" not in text


def test_a_damaged_image_size_is_refused_before_its_masks_are_allocated(good, tmp_path):
    path = _variant(good, tmp_path, "img", config__image_size=100_000)
    with pytest.raises(CkaLabError, match="attention masks of image_size 100000 .* would need about"):
        load_model(path)


def test_a_fifo_is_refused_at_once_never_read(tmp_path, capsys):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    codes = []
    t = threading.Thread(target=lambda: codes.append(main(["info", str(fifo)])), daemon=True)
    t.start()
    t.join(120)  # before: blocked forever on the open
    assert not t.is_alive() and codes == [2]
    assert capsys.readouterr().err.strip() == (f"cka-lab: error: checkpoint {str(fifo)!r} is a FIFO (named pipe), "
                                               "not a regular file")


def test_empty_and_folder_checkpoints_are_named_for_what_they_are(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CkaLabError, match="is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CkaLabError, match="is a folder"):
        read_checkpoint(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_code_running_pickle_is_one_line_without_torchs_warning_or_advice(tmp_path, capsys, protocol):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f, protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["info", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert [str(w.message) for w in caught] == []  # before: torch's "Detected pickle protocol 4" UserWarning
    assert err.startswith(f"cka-lab: error: refusing to load {str(path)!r}")
    assert "weights_only" not in err
