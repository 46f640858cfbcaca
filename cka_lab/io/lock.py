"""One writer per folder: an exclusive ``fcntl.flock`` on a lock file that names its holder.

``with folder_lock(folder, "run folder"):`` takes an exclusive, non-blocking ``flock`` on
``folder/.cka_lab.lock`` (created with ``O_NOFOLLOW``: a symlink planted there is refused, never
followed) and writes this process's PID into it. A second process that asks for the same lock is
refused at once, in one line that names the holder's PID::

    cka-lab: error: run folder 'runs/a' is being written by another cka-lab process (PID 4242): wait for
    it to end, or choose another folder

The lock file is removed when the lock is released, so a finished command leaves nothing behind; a
process killed with ``kill -9`` leaves the file, but the kernel drops its ``flock`` with the process,
so the next writer takes it over. After taking the lock the file is checked to be still the one at
the path (same inode): a waiter that opened a file its holder has just removed retries on the new one,
so two processes never both believe they hold the lock. ``file_lock(path)`` locks one output file
(``.<name>.cka_lab.lock`` beside it). Locks are advisory: they exclude cka_lab writers, not other
programs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Iterator

from cka_lab.errors import CkaLabError

__all__ = ["LOCK_NAME", "folder_lock", "file_lock", "lock_holder"]

#: Name of the lock file inside a locked folder.
LOCK_NAME = ".cka_lab.lock"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TRIES = 5


def lock_holder(lock_file: str | os.PathLike) -> int | None:
    """The PID written in a lock file (None: no file, or no PID in it yet)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _open(lock_file: Path, what: str, label: str) -> int:
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CkaLabError(f"cannot lock {what} {label}: {str(lock_file)!r} is a symlink; remove it") from None
        raise CkaLabError(f"cannot lock {what} {label} ({exc.strerror}): choose another folder") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CkaLabError(f"cannot lock {what} {label}: {str(lock_file)!r} is not a regular file; remove it")
    return fd


def _same_file(fd: int, lock_file: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(lock_file, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _hold(lock_file: Path, what: str, label: str) -> Iterator[Path]:
    for _ in range(_TRIES):
        fd = _open(lock_file, what, label)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CkaLabError(f"cannot lock {what} {label} ({exc.strerror})") from None
            pid = lock_holder(lock_file)
            holder = f"PID {pid}" if pid is not None else "PID not yet written"
            raise CkaLabError(f"{what} {label} is being written by another cka-lab process ({holder}): "
                              "wait for it to end, or choose another folder") from None
        if _same_file(fd, lock_file):
            break
        os.close(fd)  # its holder removed it while we waited for it: lock the file now at the path
    else:  # pragma: no cover - a lock file replaced _TRIES times in a row
        raise CkaLabError(f"cannot lock {what} {label}: its lock file keeps changing; try again")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield lock_file
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, lock_file):
                os.unlink(lock_file)  # still holding the lock: nobody can have taken this file over
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block -> the folder.

    ``what`` names the folder in the refusal (``"run folder"``, ``"study folder"``, ...).
    """
    folder = Path(folder)
    with _hold(folder / LOCK_NAME, what, repr(str(folder))):
        yield folder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on the output file ``path`` (its folder must exist) for the block."""
    path = Path(path)
    with _hold(path.with_name(f".{path.name}.cka_lab.lock"), what, repr(str(path))):
        yield path
