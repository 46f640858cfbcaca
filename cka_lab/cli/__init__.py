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
SUBCOMMANDS = ("info", "restore", "layers", "compare", "train", "plot-log", "evaluate", "contrast", "report", "study")


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
            module = importlib.import_module(f"cka_lab.cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name == f"cka_lab.cli.{name.replace('-', '_')}":
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
    from cka_lab.cli._common import remove_created_dirs

    code = 1
    try:
        code = run_reporting_errors(args.func, args)
    finally:
        if code != 0:  # a failed command leaves no empty output folder behind
            remove_created_dirs()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
