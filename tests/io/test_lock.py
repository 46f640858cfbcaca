"""Folder locks: one writer at a time, the second refused in one line naming the holder's PID."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.io import file_lock, folder_lock
from cka_lab.io.lock import LOCK_NAME, lock_holder

HOLD = textwrap.dedent("""
    import sys, time
    from cka_lab.io import folder_lock
    with folder_lock(sys.argv[1], "run folder"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_a_second_process_is_refused_with_the_holders_pid_and_may_lock_after_it_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path / LOCK_NAME) == holder.pid
        with pytest.raises(CkaLabError) as err:
            with folder_lock(tmp_path, "run folder"):
                pass
        msg = str(err.value)
        assert f"PID {holder.pid}" in msg and "run folder" in msg and "\n" not in msg
    finally:
        holder.communicate("\n", timeout=600)
    assert not (tmp_path / LOCK_NAME).exists()  # released: the lock file is gone
    with folder_lock(tmp_path):
        assert lock_holder(tmp_path / LOCK_NAME) == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=600)
    assert (tmp_path / LOCK_NAME).exists()  # kill -9 leaves the file, but not the flock
    with folder_lock(tmp_path):
        assert lock_holder(tmp_path / LOCK_NAME) == os.getpid()


def test_two_locks_in_one_process_exclude_each_other_too(tmp_path):
    with folder_lock(tmp_path, "study folder"):
        with pytest.raises(CkaLabError, match=f"study folder .* another cka-lab process \\(PID {os.getpid()}\\)"):
            with folder_lock(tmp_path, "study folder"):
                pass
    out = tmp_path / "report.pdf"
    with file_lock(out):
        with pytest.raises(CkaLabError, match="report.pdf"):
            with file_lock(out):
                pass
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_at_the_lock_path_is_refused_never_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(target)
    with pytest.raises(CkaLabError, match="symlink"):
        with folder_lock(folder):
            pass
    assert target.read_text() == "keep"
