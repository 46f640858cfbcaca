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


def writable_dir(out: Path) -> Path:
    """Create ``out`` and prove it can be written, or fail in one line before any work is done."""
    from cka_lab.io import check_writable_dir

    check_writable_dir(out)  # a probe with a random name, O_EXCL | O_NOFOLLOW: never writes through a link
    return out
