"""``cka-lab restore CKPT IN OUT --task x2``: restore an image (or a folder of images) with an EDT head."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from cka_lab.cli._common import add_device_arg, add_model_args, resolve_device
from cka_lab.errors import CkaLabError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore an image or a folder of images (super-resolve, denoise, derain)",
        description="Restore IN with the head for --task and write OUT. IN and OUT are image files, "
        "or folders (every image in IN is restored into OUT under the same name).",
    )
    add_model_args(p)
    p.add_argument("input", metavar="IN", help="image file or folder (PNG, TIF, JPG)")
    p.add_argument("output", metavar="OUT", help="output image file or folder")
    p.add_argument("--task", required=True, help="head to use: x2 x3 x4 (SR), g15 g25 g50 (denoise), L H (derain)")
    p.add_argument("--reference", metavar="GT", default=None,
                   help="ground-truth image (or folder) to score the result: PSNR/SSIM by the task's convention")
    add_device_arg(p)
    p.set_defaults(func=run)


def _pairs(inp: Path, out: Path, ref: Path | None) -> list[tuple[Path, Path, Path | None]]:
    from cka_lab.data.images import list_images

    if not inp.exists():
        raise CkaLabError(f"input {str(inp)!r} does not exist")
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise CkaLabError(f"IN is a folder, so OUT must be a folder too, but {str(out)!r} is a file")
        files = list_images(inp)
        refs: list[Path | None] = [None] * len(files)
        if ref is not None:
            ref_files = list_images(ref)
            if len(ref_files) != len(files):
                raise CkaLabError(f"{len(files)} inputs but {len(ref_files)} reference images: pair them one to one")
            refs = list(ref_files)
        return [(f, out / (f.stem + ".png"), r) for f, r in zip(files, refs)]
    return [(inp, out, ref)]


def run(args: argparse.Namespace) -> int:
    from cka_lab.data.images import read_image, read_uint8, write_image
    from cka_lab.metrics.quality import psnr_ssim, task_metric_settings
    from cka_lab.models import load_model

    device = resolve_device(args.device)
    model = load_model(args.ckpt, arch=args.arch, device=device)
    model.config.head(args.task)  # fail early on a task the model has no head for
    jobs = _pairs(Path(args.input), Path(args.output), Path(args.reference) if args.reference else None)
    y_channel, border = task_metric_settings(args.task)
    for src, dst, ref in tqdm(jobs, desc=f"restore {args.task}", unit="img", disable=len(jobs) < 2):
        x = read_image(src).to(device)
        with torch.inference_mode():
            y = model.restore(x, args.task).cpu()
        write_image(dst, y)
        line = f"{src} -> {dst} ({x.shape[-2]}x{x.shape[-1]} -> {y.shape[-2]}x{y.shape[-1]})"
        if ref is not None:
            gt = read_uint8(ref)
            if gt.shape[:2] != tuple(y.shape[-2:]):
                raise CkaLabError(
                    f"reference {ref} is {gt.shape[0]}x{gt.shape[1]} but the result is {y.shape[-2]}x{y.shape[-1]}"
                )
            p, s = psnr_ssim(y, gt, crop_border=border, y_channel=y_channel)
            line += f"  PSNR {p:.2f} dB  SSIM {s:.4f} ({'Y' if y_channel else 'RGB'}, border {border})"
        tqdm.write(line)
    return 0
