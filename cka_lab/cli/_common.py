"""Small pieces shared by the subcommands: loading a model from the command line, picking a device."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cka_lab.errors import CkaLabError


def add_model_args(parser: argparse.ArgumentParser, *, ckpt_help: str = "EDT checkpoint (cka_lab or official .pth)") -> None:
    parser.add_argument("ckpt", metavar="CKPT", help=ckpt_help)
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture name (e.g. SRx2_EDTT) to use instead of the one inferred from the weights",
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CkaLabError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CkaLabError(f"device {name!r} requested but no CUDA GPU is available: use --device cpu")
    return device


def format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def probe_tasks(spec: str | None, model_a, model_b) -> tuple[str, str]:
    """``--task``: one head for both models (``x2``), one each (``x2,g25``), or each model's first."""
    if spec is None:
        return model_a.tasks[0], model_b.tasks[0]
    parts = [t.strip() for t in spec.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(parts):
        raise CkaLabError(f"--task {spec!r}: give one task (x2) or two separated by a comma (x2,g25)")
    model_a.config.head(parts[0])
    model_b.config.head(parts[1])
    return parts[0], parts[1]


_CREATED: list[Path] = []  # folders writable_dir made in this process: removed if a command fails and leaves them empty


def writable_dir(out: Path) -> Path:
    """Create ``out`` and prove it can be written, or fail in one line before any work is done.

    Folders it creates are removed again (if still empty) when the command fails: see
    :func:`remove_created_dirs`.
    """
    from cka_lab.io import check_writable_dir

    _CREATED.extend(check_writable_dir(out))  # a random-named O_EXCL | O_NOFOLLOW probe: never through a link
    return out


def remove_created_dirs() -> None:
    """Remove the folders :func:`writable_dir` created, where they are still empty (after a failure)."""
    from cka_lab.io import remove_empty_dirs

    remove_empty_dirs(_CREATED)
    _CREATED.clear()


def parse_layers(spec: str | None) -> list[str] | None:
    """``--layers``: comma-separated names/globs -> a list; ``None`` (flag absent) -> the default layers.

    An empty value or an empty entry (``--layers ''``, ``a,,b``) is refused, not read as "the default".
    """
    if spec is None:
        return None
    names = [s.strip() for s in spec.split(",")]
    if not all(names):
        raise CkaLabError(f"--layers {spec!r} has an empty name: give comma-separated module names or glob "
                          "patterns, or leave --layers out for the default (every transformer block)")
    return names


def check_probe_args(args: argparse.Namespace) -> None:
    """``--patch``, ``--n-samples``: positive when given (0 is refused, never read as "the default")."""
    if getattr(args, "patch", None) is not None and args.patch < 1:
        raise CkaLabError(f"--patch must be a positive crop size in pixels, got {args.patch} "
                          "(leave it out for the default: 48, or 96 for a downsampling head)")
    if getattr(args, "n_samples", 1) < 1:
        raise CkaLabError(f"--n-samples must be >= 1, got {args.n_samples}")
