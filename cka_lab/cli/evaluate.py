"""``cka-lab evaluate CKPT --dataset DIR --task x2 [--json]``: PSNR/SSIM of a head on a test set.

The dataset folder is read by task: SR -- a Set5-style folder (``HR/x{s}`` or ``HR/original`` with
``LR_bicubic/x{s}``) or a folder of HR images (LR made with MATLAB bicubic); denoising -- a folder of
clean images (noise by the official protocol, seed 0); deraining -- a folder with ``rain/`` and
``norain/``. Scores follow the official conventions (see ``cka_lab.metrics.quality``).
"""

from __future__ import annotations

import argparse
import json

from cka_lab.cli._common import add_device_arg, add_model_args, resolve_device
from cka_lab.cli.restore import add_tile_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="PSNR/SSIM of one head on a test set (official protocol)",
        description="Restore every image of --dataset with the head for --task and print PSNR/SSIM per image "
        "and their mean, by the task's convention (SR: Y channel, border = scale; DN: RGB; DR: Y).",
    )
    add_model_args(p)
    p.add_argument("--dataset", required=True, metavar="DIR", help="test set folder (e.g. shared/data/sr/Set5)")
    p.add_argument("--task", required=True, help="head: x2 x3 x4 (SR), g15 g25 g50 (denoise), L H (derain)")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="only the first N images (sorted by name)")
    p.add_argument("--crop", type=int, default=0, metavar="P",
                   help="centre-crop every input to at most PxP pixels (faster; not comparable to full-image numbers)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_tile_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.data.datasets import eval_pairs
    from cka_lab.errors import CkaLabError
    from cka_lab.io import strict_json
    from cka_lab.metrics.quality import task_metric_settings
    from cka_lab.models import load_model
    from cka_lab.models.tiling import check_tile_args, plan_tiles, restore_tiled
    from cka_lab.train.validate import evaluate_pairs

    if args.max_images < 0 or args.crop < 0:
        raise CkaLabError("--max-images and --crop must be >= 0")
    check_tile_args(args.tile, args.tile_overlap)
    device = resolve_device(args.device)
    y_channel, border = task_metric_settings(args.task)
    model = load_model(args.ckpt, arch=args.arch, device=device)
    model.config.head(args.task)
    pairs = eval_pairs(args.dataset, args.task, max_images=args.max_images, crop=args.crop)

    def restore(x):  # whole image if it fits, else tiles (bounded memory); the same result within 1e-4
        plan = plan_tiles(model.config, args.task, *x.shape[-2:], tile=args.tile, overlap=args.tile_overlap,
                          device=device)
        return restore_tiled(model, x, args.task, plan)

    score = evaluate_pairs(model, pairs, args.task, device, restore=restore)
    result = {
        "ckpt": str(args.ckpt),
        "arch": model.config.name,
        "task": args.task,
        "dataset": str(args.dataset),
        "y_channel": y_channel,
        "crop_border": border,
        "images": [{"name": s.name, "psnr": s.psnr, "ssim": s.ssim} for s in score.per_image],
        "psnr": score.psnr,
        "ssim": score.ssim,
        "seconds": round(score.seconds, 3),
    }
    if args.json:
        print(json.dumps(strict_json(result), indent=2, allow_nan=False))
        return 0
    for s in score.per_image:
        print(f"{s.name:<24} PSNR {s.psnr:7.3f} dB  SSIM {s.ssim:.4f}")
    print(f"{'mean':<24} PSNR {score.psnr:7.3f} dB  SSIM {score.ssim:.4f}  "
          f"({model.config.name}, task {args.task}, {score.images} images, {'Y' if y_channel else 'RGB'}, border {border})")
    return 0
