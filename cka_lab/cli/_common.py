"""Small pieces shared by the subcommands: loading a model from the command line, picking a device."""

from __future__ import annotations

import argparse

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
