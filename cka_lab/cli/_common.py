"""Small pieces shared by the subcommands: loading a model from the command line, picking a device."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from cka_lab.errors import CkaLabError
from cka_lab.runtime import resolve_device


def add_model_args(parser: argparse.ArgumentParser, *, ckpt_help: str = "EDT checkpoint (cka_lab or official .pth)") -> None:
    parser.add_argument("ckpt", metavar="CKPT", help=ckpt_help)
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture name (e.g. SRx2_EDTT) to use instead of the one inferred from the weights",
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


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


#: Bytes an analysis keeps per probe crop whatever the model (its place in the crop plan, per-crop
#: statistics), rounded up: bounds ``--n-samples`` by the memory before any crop is planned.
BYTES_PER_CROP = 4096


def check_probe_args(args: argparse.Namespace) -> None:
    """``--patch``, ``--n-samples``, ``--batch-size``, ``--unit-size``, ``--max-gib``: in range, before any
    model is loaded (0 is refused, never read as "the default"; a budget is a finite size this machine has)."""
    from cka_lab.models.bounds import available_memory, check_fits
    from cka_lab.models.tiling import memory_budget

    if getattr(args, "patch", None) is not None and args.patch < 1:
        raise CkaLabError(f"--patch must be a positive crop size in pixels, got {args.patch} "
                          "(leave it out for the default: 48, or 96 for a downsampling head)")
    if getattr(args, "n_samples", 1) < 1:
        raise CkaLabError(f"--n-samples must be >= 1, got {args.n_samples}")
    for flag in ("batch_size", "unit_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise CkaLabError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if hasattr(args, "n_samples"):
        check_fits(args.n_samples * BYTES_PER_CROP, memory_budget("cpu"), f"--n-samples {args.n_samples}",
                   "use fewer probe crops")
    gib = getattr(args, "max_gib", None)
    if gib is not None:
        from cka_lab.io.inputs import format_bytes

        if not math.isfinite(gib) or gib <= 0:
            raise CkaLabError(f"--max-gib must be a positive number of GiB, got {gib} (leave it out for 4)")
        if gib * 2**30 < 2**20:
            raise CkaLabError(f"--max-gib {gib} is less than 1 MiB, too little to hold one Gram: give at least 0.001")
        avail = available_memory("cpu")
        if gib * 2**30 > avail:
            raise CkaLabError(f"--max-gib {gib} is more than the {format_bytes(avail)} of memory available: "
                              f"give at most {avail / 2**30:.3g}")


def check_probe_bounds(args: argparse.Namespace, targets, device: torch.device | str = "cpu") -> None:
    """``--n-samples`` against the probe data and ``--batch-size``/``--patch`` against the memory, for each
    ``(model, task)`` at the size it will be probed at: refused in one line before the first crop is cut."""
    from cka_lab.analysis.probing import default_probe_images, probe_size
    from cka_lab.data.images import image_size, list_images
    from cka_lab.models.bounds import available_memory, check_fits, inference_bytes

    images = default_probe_images() if args.data is None else list_images(args.data)
    sizes = [image_size(p) for p in images]
    for model, task in targets:
        p = probe_size(model, task, args.patch)
        if p is None:
            continue
        crops = sum(max(0, h - p + 1) * max(0, w - p + 1) for h, w in sizes)
        if 0 < crops < args.n_samples:
            raise CkaLabError(f"--n-samples {args.n_samples} is more than the {crops} distinct crops of {p} px that "
                              f"the {len(sizes)} probe images hold: use fewer crops, or more or larger images (--data)")
        batch = min(args.batch_size, args.n_samples)
        check_fits(batch * inference_bytes(model.config, task, p, p), available_memory(device),
                   f"a forward batch of {batch} crops of {p} px on {model.name}", "use a smaller --batch-size or --patch")


def add_analysis_args(p: argparse.ArgumentParser, *, n_samples: int = 128) -> None:
    """The options of an analysis (compare, contrast, report): probe crops, layers, features, estimator."""
    p.add_argument("--task", default=None,
                   help="head to probe: one task for both (x2) or A,B (x2,g25); default: each model's first head")
    p.add_argument("--layers", default="default",
                   help="default (every transformer block), paper (the EDT authors' Fig. 2 set: head, attention- "
                        "and FFN-residual outputs of every block, stage outputs, tail), or comma-separated module "
                        "names / glob patterns")
    p.add_argument("--features", default=None,
                   help="update (output - input: what each block adds to the residual stream) or output; "
                        "default: output for --layers paper (the authors' protocol), update otherwise")
    p.add_argument("--estimator", default="unbiased-minibatch",
                   help="unbiased-minibatch (streaming, Nguyen et al. 2021; default) or biased-full (the exact "
                        "full-batch linear CKA of Kornblith et al. 2019, as the EDT authors computed it)")
    p.add_argument("--data", default=None, help="folder of probe images (default: the images bundled with cka_lab)")
    p.add_argument("--patch", type=int, default=None,
                   help="probe input size for both models (default: each model's training size: 48 px for SR, "
                        "192 px for EDT-T's downsampling denoise/derain heads)")
    p.add_argument("--n-samples", type=int, default=n_samples, help=f"number of probe crops (default {n_samples})")
    p.add_argument("--batch-size", type=int, default=32,
                   help="crops per forward batch (default 32; the probe inputs do not depend on it)")
    p.add_argument("--unit-size", type=int, default=None,
                   help="crops per resampling unit of the intervals (default 8)")
    p.add_argument("--max-gib", type=float, default=None,
                   help="memory budget of biased-full in GiB (default 4): features of one pass + all N x N Grams; "
                        "more memory, fewer passes over the crops")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions and noise (default 0)")
    p.add_argument("--min-effect", type=float, default=0.01,
                   help="smallest |difference of CKA| ever stated (default 0.01); cells are also tested with "
                        "Benjamini-Hochberg over the heatmap and against the controls")
    add_device_arg(p)


def spec_from_args(args: argparse.Namespace, *, attention: bool = False, controls: bool = True):
    """The AnalysisSpec of the parsed options (validated: one-line errors for bad values)."""
    from cka_lab.analysis.spec import AnalysisSpec, ProbeSpec

    layers = args.layers
    if isinstance(layers, str) and ("," in layers or not layers.strip()):
        layers = tuple(parse_layers(layers))  # an empty entry ('a,,b') is refused, never dropped
    return AnalysisSpec(
        probe=ProbeSpec(data=args.data, patch=args.patch, n_samples=args.n_samples, seed=args.seed,
                        batch_size=args.batch_size),
        layers=layers, features=args.features, estimator=args.estimator, attention=attention,
        controls=controls, unit_size=args.unit_size, min_effect=getattr(args, "min_effect", 0.01),
        max_bytes=None if args.max_gib is None else int(args.max_gib * 2**30),  # checked: check_probe_args
    )


class Session:
    """This process's place in a ``torchrun`` job (a single process without one): device, rank, and
    whether it writes the outputs (rank 0 only). Use as a context manager; the group is closed on exit."""

    def __init__(self, device: str) -> None:
        from cka_lab.runtime import init_distributed, rank_world

        if rank_world().world > 1:
            self.env = init_distributed(device, setting="--device")
            self.device = self.env.device
        else:
            self.env = None
            self.device = resolve_device(device)

    @property
    def writes(self) -> bool:
        return self.env is None or self.env.is_main

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if self.env is not None:
            self.env.close()
