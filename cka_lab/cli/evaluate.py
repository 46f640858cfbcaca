"""``cka-lab evaluate CKPT --dataset DIR --task x2 [--json]``: PSNR/SSIM of a head on a test set.

The dataset folder is read by task: SR -- a Set5-style folder (``HR/x{s}`` or ``HR/original`` with
``LR_bicubic/x{s}``) or a folder of HR images (LR made with MATLAB bicubic); denoising -- a folder of
clean images (noise by the official protocol, seed 0); deraining -- a folder with ``rain/`` and
``norain/``. Scores follow the official conventions (see ``cka_lab.metrics.quality``).

Beside the model, the task's trivial baselines are scored on the same images by the same protocol
(:mod:`cka_lab.metrics.baselines`): bicubic upscaling of the LR input (SR), the noisy input and the best
Gaussian blur of it (denoising), the rainy input (deraining); ``--no-baselines`` leaves them out.
"""

from __future__ import annotations

import argparse
import json

from cka_lab.cli._common import add_device_arg, add_model_args
from cka_lab.runtime import resolve_device
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
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="leave out the trivial baselines (bicubic / noisy and best blur / rainy input)")
    add_tile_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.data.datasets import eval_pairs
    from cka_lab.errors import CkaLabError
    from cka_lab.io import strict_json
    from cka_lab.metrics.baselines import baseline_scores
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
    baselines = baseline_scores(pairs, args.task) if args.baselines else []
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
        "baselines": [b.as_dict() for b in baselines],
    }
    if args.json:
        print(json.dumps(strict_json(result), indent=2, allow_nan=False))
        return 0
    names = [b.name for b in baselines]
    head = f"{'image':<24} {'model PSNR/SSIM':>18}" + "".join(f" {n + ' PSNR/SSIM':>20}" for n in names)
    print(head)
    for k, s in enumerate(score.per_image):
        print(f"{s.name:<24} {s.psnr:9.3f} {s.ssim:.4f}"
              + "".join(f" {b.per_image[k][1]:11.3f} {b.per_image[k][2]:.4f}" for b in baselines))
    print(f"{'mean':<24} {score.psnr:9.3f} {score.ssim:.4f}" + "".join(f" {b.psnr:11.3f} {b.ssim:.4f}" for b in baselines))
    print(f"({model.config.name}, task {args.task}, {score.images} images, {'Y' if y_channel else 'RGB'}, border {border}; "
          "PSNR in dB, baselines on the same images by the same protocol"
          + "".join(f"; {b.name}: {b.detail}" for b in baselines if b.detail) + ")")
    return 0
