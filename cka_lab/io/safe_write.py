"""The one way cka_lab writes a file: a unique temporary file in the target folder, never through a link.

Every output of cka_lab (images, PDFs, CSV/JSON tables, figures, checkpoints, logs) goes through
:func:`atomic_write` or the helpers built on it:

1. the temporary file ``.<name>.<random>.tmp`` is created in the target's own folder with
   ``O_CREAT | O_EXCL | O_NOFOLLOW``: a planted file or symlink of that name makes the open fail,
   it is never written through;
2. the data is written, flushed and ``fsync``-ed;
3. ``os.replace`` renames it over the target atomically. A symlink at the target path is replaced
   by the new file; the file it pointed to is left untouched.

If anything fails on the way -- an ``OSError`` (a full disk, a read-only folder), a ``zlib.error``
from a PNG encoder, a ``KeyboardInterrupt`` -- the temporary file is removed and the target is
left as it was. ``OSError`` and ``zlib.error`` become one-line :class:`CkaLabError` messages.

Append-only logs (:func:`open_append`) are opened with ``O_APPEND | O_NOFOLLOW`` and must be
regular files: a symlink at a log path is refused, never followed. Rewriting a log (dropping rows
on resume) goes through :func:`atomic_write`.

Folders are checked with :func:`check_writable_dir`, which creates a uniquely named probe file
with ``O_EXCL | O_NOFOLLOW`` and removes it, so no existing file or link is ever opened.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import secrets
import stat
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from cka_lab.errors import CkaLabError

__all__ = [
    "atomic_write",
    "write_bytes",
    "write_text",
    "write_json",
    "write_csv",
    "strict_json",
    "open_append",
    "check_writable_dir",
    "check_not_input",
    "same_file",
    "made_dirs",
    "remove_empty_dirs",
    "output_dir",
    "temp_name",
    "WRITE_ERRORS",
]

#: Errors that mean "the write failed" (not a bug): turned into one CkaLabError line.
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, zlib.error)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<12 hex>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
    return f"{kind}: {exc}".strip().rstrip(":")


def _fail(path: Path, exc: BaseException, what: str = "write") -> CkaLabError:
    hint = "free some space or choose another output" if getattr(exc, "errno", None) == errno.ENOSPC \
        else "choose another output"
    return CkaLabError(f"cannot {what} {str(path)!r} ({_reason(exc)}): {hint}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (same inode, or the same resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse (one line) an output that is one of the ``inputs``."""
    for inp in inputs:
        if inp is not None and same_file(out, inp):
            raise CkaLabError(f"output {str(out)!r} is the input {str(inp)!r}: refusing to overwrite an input; "
                              "choose another output")


def made_dirs(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and missing parents -> the folders created, outermost first (for clean-up)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CkaLabError(f"cannot write to folder {str(folder)!r} (cannot create it: a file of that name, or above it, "
                          "is in the way): choose another output") from None
    except WRITE_ERRORS as exc:
        raise CkaLabError(f"cannot write to folder {str(folder)!r} (cannot create it: {_reason(exc)}): "
                          "choose another output") from None
    return list(reversed(missing))


def remove_empty_dirs(dirs: Iterable[Path]) -> None:
    """Remove the given folders, innermost first, if they are empty (``rmdir`` never removes content)."""
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def output_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` (checked writable) for the block; if the block fails, remove what it created empty."""
    created = check_writable_dir(folder)
    try:
        yield Path(folder)
    except BaseException:
        remove_empty_dirs(created)
        raise


def check_writable_dir(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` if needed and prove it can be written -> the folders this call created.

    The proof is a probe file with a random name created with ``O_EXCL | O_NOFOLLOW`` and unlinked at
    once: no existing file or symlink is opened. Fails in one line (CkaLabError); folders it created
    are removed again on failure.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CkaLabError(f"cannot write to output folder {str(folder)!r}: it is a file; choose a folder")
    created = made_dirs(folder)
    probe = folder / f".cka_lab_write_probe.{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_empty_dirs(created)
        raise CkaLabError(f"cannot write to output folder {str(folder)!r} ({exc.strerror}): choose another output") from None
    return created


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = "utf-8",
                 newline: str | None = None, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success fsync and rename it over ``path``.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, ``encoding``/``newline`` as for ``open``). The parent
    folder is created. ``inputs``: files the output must not be (refused in one line). On any failure
    the temporary file is removed and ``path`` is left as it was; ``OSError``/``zlib.error`` are raised
    as one-line :class:`CkaLabError`.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise CkaLabError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    made_dirs(path.parent if str(path.parent) else Path("."))
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
    except WRITE_ERRORS as exc:
        raise _fail(path, exc) from None
    f = None
    try:
        f = os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": encoding, "newline": newline}))
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as exc:
        if f is None:
            os.close(fd)
        else:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, WRITE_ERRORS):
            raise _fail(path, exc) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview, **kw) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`) -> ``path``."""
    with atomic_write(path, "wb", **kw) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, **kw) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically -> ``path``."""
    with atomic_write(path, "w", **kw) as f:
        f.write(text)
    return Path(path)


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None`` and numpy/torch scalars made plain.

    Mappings, lists and tuples are walked; anything else JSON cannot hold is left for ``json``'s
    ``default`` (``str``).
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) and k is not None else k: strict_json(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalars, 0-dim arrays and tensors
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return strict_json(item())
    tolist = getattr(obj, "tolist", None)  # arrays and tensors
    if callable(tolist):
        return strict_json(tolist())
    return obj


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, **kw) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf written as ``null``, ``allow_nan=False``) atomically."""
    text = json.dumps(strict_json(obj), indent=indent, allow_nan=False, default=str)
    return write_text(path, text + "\n", **kw)


def write_csv(path: str | os.PathLike, frame: Any, **to_csv_kw) -> Path:
    """Write a pandas DataFrame as CSV atomically (``to_csv_kw`` as for ``DataFrame.to_csv``)."""
    buf = io.StringIO()
    frame.to_csv(buf, **to_csv_kw)
    return write_text(path, buf.getvalue(), newline="")


def open_append(path: str | os.PathLike, *, newline: str | None = "") -> IO[str]:
    """Open a log file for appending (text, UTF-8), creating it; a symlink or non-regular file is refused.

    ``O_APPEND | O_NOFOLLOW``: each write lands at the end, and a symlink planted at ``path`` makes
    the open fail instead of writing to its target.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CkaLabError(f"refusing to write the log {str(path)!r}: it is a symlink; remove it") from None
        raise _fail(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CkaLabError(f"refusing to write the log {str(path)!r}: it is not a regular file")
    return os.fdopen(fd, "a", encoding="utf-8", newline=newline)
