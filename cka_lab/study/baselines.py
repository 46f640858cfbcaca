"""The study's trivial baselines: scored once per target on the study's own evaluation pairs.

``eval/baselines-TARGET.json`` holds, per baseline of the target's task (bicubic for SR; the noisy input
and its best Gaussian blur for DN: :mod:`cka_lab.metrics.baselines`), PSNR/SSIM on exactly the images,
crops and protocol of the models' ``eval/RUN.json``.
"""

from __future__ import annotations

import json
from typing import Callable

from cka_lab.io import write_bytes
from cka_lab.study.runner import StudyPaths
from cka_lab.study.spec import StudySpec, task_kind

__all__ = ["evaluate_baselines"]


def evaluate_baselines(spec: StudySpec, paths: StudyPaths, *, say: Callable[[str], None] = print) -> list[dict]:
    """One row per target and baseline: target, baseline, psnr, ssim, images, dataset, detail, per_image."""
    from cka_lab.data.datasets import eval_pairs
    from cka_lab.metrics.baselines import baseline_scores

    rows: list[dict] = []
    for target in spec.tasks.targets:
        path = paths.eval / f"baselines-{target}.json"
        if not path.exists():
            dataset = str(getattr(spec.eval, task_kind(target)))
            pairs = eval_pairs(spec.data_root / dataset, target, max_images=spec.eval.max_images, crop=spec.eval.crop)
            found = [{"target": target, "baseline": b.name, "dataset": dataset, **{k: v for k, v in b.as_dict().items()
                                                                                   if k != "name"}}
                     for b in baseline_scores(pairs, target)]
            write_bytes(path, json.dumps(found, indent=2).encode("utf-8"))
            for b in found:
                say(f"[study] baseline {target} {b['baseline']}: PSNR {b['psnr']:.3f} dB, SSIM {b['ssim']:.4f}"
                    + (f" ({b['detail']})" if b["detail"] else ""))
        rows += json.loads(path.read_text(encoding="utf-8"))
    return rows
