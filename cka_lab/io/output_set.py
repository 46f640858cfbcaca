"""An output set -- the files one command writes into a folder -- written as a set, never as a mix.

``with output_set(folder, owned) as staging:`` gives a fresh hidden folder inside ``folder``
(``.cka_lab_set.<random>.tmp``, created with ``mkdir``: nothing planted is reused). The command writes
its whole set there. When the block ends without error, every file of the set is moved into
``folder`` with ``os.replace`` (a rename: no copy, no new disk space, so it does not fail for a full
disk), the files named in ``owned`` that the new set does not have are removed (they belong to an
earlier run of the same command, e.g. a ``cka_long.csv`` the new protocol does not write), and the
staging folder is removed. When the block fails -- a full disk in the middle of the set, an error,
Ctrl-C -- the staging folder is removed and ``folder`` keeps its earlier set, whole.

Call it under the folder's lock (:func:`cka_lab.io.lock.folder_lock`): the lock keeps a second
writer out while the set is moved into place. A staging folder left by a process killed with
``kill -9`` is removed by :func:`remove_stale_sets` (the next writer, holding the lock, calls it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator

from cka_lab.errors import CkaLabError

__all__ = ["output_set", "remove_stale_sets", "STAGING_PREFIX"]

#: Staging folders are named ``<STAGING_PREFIX><12 hex>.tmp``.
STAGING_PREFIX = ".cka_lab_set."


def remove_stale_sets(folder: str | os.PathLike) -> None:
    """Remove staging folders that a killed writer left in ``folder`` (call it holding the folder's lock)."""
    folder = Path(folder)
    for p in folder.glob(f"{STAGING_PREFIX}*.tmp"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _check_targets(folder: Path, names: list[str]) -> None:
    """Every target must be free, a file or a link (replaced, never followed): a folder there is refused."""
    for name in names:
        try:
            mode = os.lstat(folder / name).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            raise CkaLabError(f"cannot write {str(folder / name)!r}: it is a folder; move it away or choose another "
                              "output folder")


@contextlib.contextmanager
def output_set(folder: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Stage a set of files for ``folder``; move them in together when the block succeeds (see the module)."""
    folder = Path(folder)
    remove_stale_sets(folder)
    staging = folder / f"{STAGING_PREFIX}{secrets.token_hex(6)}.tmp"
    try:
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise CkaLabError(f"cannot write to output folder {str(folder)!r} ({exc.strerror}): choose another output") from None
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir())
        _check_targets(folder, names)
        for name in names:
            os.replace(staging / name, folder / name)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CkaLabError(f"cannot write the results into {str(folder)!r} ({exc.strerror}): "
                              "choose another output") from None
        raise
    for name in set(owned) - set(names):  # an earlier run's file that this set does not have
        target = folder / name
        if target.is_symlink() or target.is_file():
            with contextlib.suppress(OSError):
                target.unlink()
    with contextlib.suppress(OSError):
        staging.rmdir()
