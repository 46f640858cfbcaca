"""The ``cka-lab`` command line: one module per subcommand, this file only wires them.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its parser and sets
``func`` to a callable ``run(args) -> int | None``. Errors the user can fix are raised as
:class:`cka_lab.errors.CkaLabError` and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from cka_lab import __version__
from cka_lab.errors import run_reporting_errors

# Order here is the order shown by ``cka-lab --help``.
SUBCOMMANDS = ("info", "restore", "layers", "compare", "train", "evaluate", "contrast", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cka-lab",
        description="EDT image-restoration transformers: restore, train, and compare what they compute "
        "layer by layer (CKA, attention distance).",
    )
    parser.add_argument("--version", action="version", version=f"cka-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cka_lab.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name == f"cka_lab.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_reporting_errors(args.func, args)


# glibc maps every allocation above 32 MB afresh and unmaps it on free; EDT's attention maps (up to
# 1 GB per block on CPU) then pay page faults on every block. Serving them from a heap that keeps
# freed memory is 2x faster (a 32-crop EDT-T pass at 96 px: 75 s -> 38 s, sys time 4x lower). glibc
# reads these variables once, at process start, so the console script re-executes itself with them.
_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def console(module: str | None = None) -> None:
    """Entry point of the ``cka-lab`` script (and of ``python -m cka_lab``, ``module="cka_lab"``):
    ``main`` in a process whose allocator keeps freed memory (see above; ``CKA_LAB_KEEP_MALLOC=1``
    keeps the system's settings)."""
    import os

    if (sys.platform.startswith("linux") and os.environ.get("CKA_LAB_KEEP_MALLOC") != "1"
            and any(k not in os.environ for k in _MALLOC_ENV)):
        env = {**os.environ, **_MALLOC_ENV}
        try:
            head = ["-m", module] if module else [sys.argv[0]]
            os.execve(sys.executable, [sys.executable, *head, *sys.argv[1:]], env)
        except OSError:
            pass  # cannot re-execute: run here, with the system's allocator settings
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console()
