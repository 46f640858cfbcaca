"""The safe-write helper: temp beside the target, never through a link, atomic, nothing left on failure."""

from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.io import (
    atomic_write,
    check_not_input,
    check_writable_dir,
    open_append,
    output_dir,
    strict_json,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)
from cka_lab.io import safe_write


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or "probe" in p.name)


def test_writes_replace_the_file_atomically_and_leave_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert _leftovers(target.parent) == []
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_a_symlink_at_the_target_is_replaced_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    write_json(link, {"a": 1})
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and json.loads(link.read_text()) == {"a": 1}


def test_a_planted_file_or_link_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    monkeypatch.setattr(safe_write.secrets, "token_hex", lambda n: "feedfacecafe")
    planted = tmp_path / ".report.pdf.feedfacecafe.tmp"
    planted.symlink_to(victim)
    with pytest.raises(CkaLabError, match="cannot write"):
        write_bytes(tmp_path / "report.pdf", b"%PDF-")
    assert victim.read_text() == "precious"
    assert planted.is_symlink() and not (tmp_path / "report.pdf").exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), zlib.error("Error -3")])
def test_a_failed_write_is_one_line_keeps_the_old_file_and_removes_the_temp(tmp_path, error):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(CkaLabError) as info:
        with atomic_write(target) as f:
            f.write(b"half")
            raise error
    msg = str(info.value)
    assert "\n" not in msg and str(target) in msg
    assert ("No space left" in msg and "free some space" in msg) if isinstance(error, OSError) else "zlib" in msg
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_full_disk_at_fsync_is_caught_too(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_write.os, "fsync", full)
    with pytest.raises(CkaLabError, match="No space left"):
        write_text(tmp_path / "x.csv", "a,b\n")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_propagate_unchanged_but_remove_the_temp(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"1")
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="bug"):
        with atomic_write(tmp_path / "x.bin") as f:
            raise ValueError("bug")
    assert list(tmp_path.iterdir()) == []


def test_strict_json_writes_nan_and_inf_as_null(tmp_path):
    import numpy as np
    import torch

    obj = {"nan": float("nan"), "inf": float("inf"), "ok": 0.5, "np": np.float64("nan"),
           "arr": np.array([1.0, np.nan]), "t": torch.tensor(2.0), "nested": [{"x": -float("inf")}], "p": Path("a")}
    assert strict_json(obj)["nested"] == [{"x": None}]
    path = write_json(tmp_path / "summary.json", obj)

    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"nan": None, "inf": None, "ok": 0.5, "np": None, "arr": [1.0, None], "t": 2.0,
                    "nested": [{"x": None}], "p": "a"}


def test_csv_goes_through_the_same_path(tmp_path):
    import pandas as pd

    write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}), index=False)
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"


def test_writable_check_never_touches_existing_files_or_links(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".write_test").symlink_to(victim)  # where the old check wrote
    assert check_writable_dir(out) == []
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [".write_test"]
    created = check_writable_dir(tmp_path / "new" / "deeper")
    assert created == [tmp_path / "new", tmp_path / "new" / "deeper"]


def test_an_unwritable_folder_is_one_line_and_what_was_created_is_removed(tmp_path, monkeypatch):
    real_open = os.open

    def deny(path, flags, mode=0o777, **kw):
        if "write_probe" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(safe_write.os, "open", deny)
    with pytest.raises(CkaLabError, match="Permission denied"):
        check_writable_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CkaLabError, match="is a file"):
        check_writable_dir(blocker)
    with pytest.raises(CkaLabError, match="cannot create it"):
        check_writable_dir(blocker / "sub")


def test_output_dir_removes_empty_folders_it_made_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "x" / "y"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with output_dir(tmp_path / "kept") as d:
        (d / "f").write_text("")
    assert (tmp_path / "kept" / "f").exists()


def test_append_refuses_a_symlinked_log_and_appends_to_a_regular_one(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("precious")
    log = tmp_path / "train_log.csv"
    log.symlink_to(victim)
    with pytest.raises(CkaLabError, match="symlink"):
        open_append(log)
    assert victim.read_text() == "precious"
    log.unlink()
    for row in ("a\n", "b\n"):
        with open_append(log) as f:
            f.write(row)
    assert log.read_text() == "a\nb\n"


def test_an_input_is_never_an_output(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    with pytest.raises(CkaLabError, match="refusing to overwrite an input"):
        check_not_input(tmp_path / "." / "in.png", [src])
    with pytest.raises(CkaLabError, match="refusing to overwrite an input"):
        write_bytes(src, b"y", inputs=[src])
    assert src.read_bytes() == b"x"
    check_not_input(tmp_path / "other.png", [src])
