"""Every file cka_lab reads is checked before it is read: it exists, is a regular file, and has a size
that fits.

:func:`open_input` opens with ``O_NONBLOCK`` and checks the open file with ``fstat``: a FIFO, a socket
or a device given where a file is expected is refused in one line instead of blocking forever on the
first read (and the check is on the file actually opened, not on a name that could change between
a check and an open). :func:`check_input_file` does the same check and closes the file, for readers
that take a path. Sizes are checked against a limit the caller gives (a config file is small, a
checkpoint must fit in memory).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from cka_lab.errors import CkaLabError

__all__ = ["open_input", "check_input_file", "file_kind", "format_bytes"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def format_bytes(n: float) -> str:
    """``n`` bytes in words: ``"1.5 GiB"``, ``"320 MiB"``, ``"12 KiB"``, ``"17 bytes"``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``"a folder"``, ``"a FIFO (named pipe)"``, ...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_input(path: str | os.PathLike, what: str = "file", *, max_bytes: int | None = None,
               min_bytes: int = 1, hint: str = "") -> BinaryIO:
    """Open ``path`` for reading (binary) after checking it: exists, regular file, size within bounds.

    ``what`` names the file in messages (``"checkpoint"``, ``"config file"``); ``hint`` is added to the
    size refusal. Every failure is one :class:`CkaLabError` line; the returned file blocks normally.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        raise CkaLabError(f"{what} {str(path)!r} does not exist: check the path") from None
    except IsADirectoryError:
        raise CkaLabError(f"{what} {str(path)!r} is a folder, not a file") from None
    except OSError as exc:
        raise CkaLabError(f"cannot read {what} {str(path)!r} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CkaLabError(f"{what} {str(path)!r} is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size < min_bytes:
            raise CkaLabError(f"{what} {str(path)!r} is empty" if st.st_size == 0 else
                              f"{what} {str(path)!r} is too short ({st.st_size} bytes) to be a {what}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise CkaLabError(f"{what} {str(path)!r} is {format_bytes(st.st_size)}, more than the "
                              f"{format_bytes(max_bytes)} it may be" + (f": {hint}" if hint else ""))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_input_file(path: str | os.PathLike, what: str = "file", **kw) -> os.stat_result:
    """Check ``path`` as :func:`open_input` does (nothing is read) -> its ``stat``."""
    with open_input(path, what, **kw) as f:
        return os.fstat(f.fileno())
