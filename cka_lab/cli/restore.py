"""``cka-lab restore CKPT IN OUT --task x2``: restore an image (or a folder of images) with an EDT head."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from cka_lab.cli._common import add_device_arg, add_model_args
from cka_lab.runtime import resolve_device
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
    add_tile_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def add_tile_args(p: argparse.ArgumentParser) -> None:
    """``--tile`` / ``--tile-overlap``, shared by ``restore`` and ``evaluate``."""
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="restore in tiles of PX x PX input pixels (rounded up to the head's multiple); "
                        "0: the whole image at once; default: tiles only when the whole image would not fit "
                        "in memory")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="context around each tile in input pixels (default 96); only each tile's core is kept")


def _pairs(inp: Path, out: Path, ref: Path | None) -> list[tuple[Path, Path, Path | None]]:
    """Every (input, output, reference) job, checked before any work: names, collisions, inputs never overwritten."""
    from cka_lab.data.images import IMAGE_EXTENSIONS, list_images
    from cka_lab.io import check_not_input, same_file
    from cka_lab.io.inputs import check_input_file

    if not inp.exists():
        raise CkaLabError(f"input {str(inp)!r} does not exist")
    if ref is not None and not ref.exists():
        raise CkaLabError(f"reference {str(ref)!r} does not exist")
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise CkaLabError(f"IN is a folder, so OUT must be a folder too, but {str(out)!r} is a file")
        if out.exists() and same_file(out, inp):
            raise CkaLabError(f"OUT {str(out)!r} is the input folder: the results would overwrite the inputs; "
                              "choose another OUT")
        files = list_images(inp)
        refs: list[Path | None] = [None] * len(files)
        if ref is not None:
            ref_files = list_images(ref)
            if len(ref_files) != len(files):
                raise CkaLabError(f"{len(files)} inputs but {len(ref_files)} reference images: pair them one to one")
            refs = list(ref_files)
        jobs = [(f, out / (f.stem + ".png"), r) for f, r in zip(files, refs)]
        seen: dict[str, Path] = {}
        for src, dst, _ in jobs:
            if dst.name in seen:
                raise CkaLabError(f"{seen[dst.name].name} and {src.name} would both be written to {dst}: "
                                  "rename one of them (outputs are named <stem>.png)")
            seen[dst.name] = src
    else:
        if out.is_dir():
            raise CkaLabError(f"IN is a file, so OUT must be a file name, but {str(out)!r} is a folder")
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CkaLabError(f"OUT {str(out)!r} needs an image suffix: {', '.join(IMAGE_EXTENSIONS)}")
        jobs = [(inp, out, ref)]
    for src, dst, r in jobs:
        check_not_input(dst, [src] + ([r] if r is not None else []))
        for f, what in ((src, "input image"), (r, "reference image")):
            if f is not None:
                check_input_file(f, what)  # a FIFO or a device is refused, never opened for reading
    return jobs


def run(args: argparse.Namespace) -> int:
    import contextlib

    from cka_lab.data.images import image_size, read_uint8, write_image
    from cka_lab.io import file_lock, folder_lock, output_dir
    from cka_lab.io.output_set import output_set
    from cka_lab.metrics.quality import psnr_ssim, task_metric_settings
    from cka_lab.models import load_model
    from cka_lab.models.tiling import check_pixel_limit, check_tile_args, plan_tiles, restore_tiled_uint8

    out = Path(args.output)
    jobs = _pairs(Path(args.input), out, Path(args.reference) if args.reference else None)
    check_tile_args(args.tile, args.tile_overlap)
    many = Path(args.input).is_dir()
    folder = out if many else (out.parent if str(out.parent) else Path("."))
    # writable (checked without following links), removed again if left empty by a failure; locked while written
    with output_dir(folder), contextlib.ExitStack() as held:
        held.enter_context(folder_lock(folder, "output folder") if many else file_lock(out, "output image"))
        device = resolve_device(args.device)
        model = load_model(args.ckpt, arch=args.arch, device=device)
        s = model.config.head(args.task).out_scale  # fail early on a task the model has no head for
        sizes = {}
        for src, _, ref in jobs:  # every header (and the size limit) is checked before the first forward pass
            h, w = image_size(src)
            check_pixel_limit(h, w, s, what=str(src))
            sizes[src] = (h, w)
            if ref is not None and image_size(ref) != (h * s, w * s):
                rh, rw = image_size(ref)
                raise CkaLabError(f"reference {ref} is {rh}x{rw} but the result of {src.name} will be {h * s}x{w * s}")
        if many:  # every image decodes (a truncated one is refused) before the first result is written
            for src, _, ref in jobs:
                read_uint8(src)
                if ref is not None:
                    read_uint8(ref)
        # a folder's results are written as a set: all of them, or (on a failure) none
        staging = held.enter_context(output_set(folder)) if many else None
        y_channel, border = task_metric_settings(args.task)
        for src, dst, ref in tqdm(jobs, desc=f"restore {args.task}", unit="img", disable=len(jobs) < 2):
            x = read_uint8(src)
            plan = plan_tiles(model.config, args.task, *x.shape[:2], tile=args.tile, overlap=args.tile_overlap,
                              device=device)
            with torch.inference_mode():
                y = restore_tiled_uint8(model, x, args.task, plan, device)
            del x
            write_image(dst if staging is None else staging / dst.name, y)
            line = f"{src} -> {dst} ({sizes[src][0]}x{sizes[src][1]} -> {y.shape[0]}x{y.shape[1]}"
            line += f", {plan.n_tiles} tiles of {plan.tile} px + {plan.overlap} px overlap)" if not plan.whole else ")"
            if ref is not None:
                p, q = psnr_ssim(y, read_uint8(ref), crop_border=border, y_channel=y_channel)
                line += f"  PSNR {p:.2f} dB  SSIM {q:.4f} ({'Y' if y_channel else 'RGB'}, border {border})"
            tqdm.write(line)
    return 0
