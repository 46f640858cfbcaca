"""Print the bundled models' table of checkpoints/README.md: full-test-set scores beside the trivial
baselines, and per stage the plain-block attention entropy / uniform's with the fraction of learnt heads
(entropy <= 0.95 of uniform) on held-out crops of the test inputs.

    CKA_LAB_DATA=/path/to/shared/data python checkpoints/describe.py [CKPT ...]

Each model is scored on its target task (SR: Set5 x2, Y channel, border 2; DN: McMaster sigma 25, RGB,
noise seed 0), as ``cka-lab evaluate`` does; attention on up to 16 crops of those inputs at the model's
training patch size (the training diagnostics' held-out probe, ``cka_lab.train.diagnostics``). A
multi-task pre-training is scored and probed through its x2 / sigma 25 head.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import torch

from cka_lab.data.datasets import eval_pairs
from cka_lab.metrics.baselines import baseline_scores
from cka_lab.models import load_model, read_checkpoint
from cka_lab.train.diagnostics import AttentionProbe, heldout_probe, summarise_heads
from cka_lab.train.validate import evaluate_pairs

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CKA_LAB_DATA", HERE.parent.parent / "shared" / "data"))
NAMES = ["edtt_srx2_scratch", "edtt_srx2x3x4_pretrain", "edtt_srx2_finetune", "edtt_dng25_scratch",
         "edtt_dn_pretrain", "edtt_dng25_finetune", "edtt_srx2_seed0"]
PATCH = 24  # the training patch at the body (checkpoints/configs/*.toml)


def describe(path: Path) -> dict:
    model = load_model(path).eval()
    task = "x2" if "x2" in model.tasks else "g25"
    folder = DATA / ("sr/Set5" if task == "x2" else "denoise/McMaster")
    pairs = eval_pairs(folder, task)
    score = evaluate_pairs(model, pairs, task, torch.device("cpu"))
    base = {b.name: b.psnr for b in baseline_scores(pairs, task)}
    crop = PATCH * (1 if task == "x2" else 4)  # a denoiser's body runs at 1/4 of its input
    probe = heldout_probe([p.input for p in pairs], crop)
    with torch.no_grad(), AttentionProbe(model) as ap:
        model.forward_task(probe, task)
    heads = summarise_heads(ap.heads())
    plain = heads[heads.kind == "plain"].set_index("stage")
    meta = read_checkpoint(path).meta
    row = {"model": path.stem, "iterations": meta.get("iteration", meta.get("iterations")), "task": task,
           "dataset": f"{folder.name} ({score.images})", "psnr": score.psnr, "ssim": score.ssim,
           **{f"{k} psnr": v for k, v in base.items()}}
    for s, r in plain.iterrows():
        row[f"s{s} H/Hmax"] = r.entropy_rel
        row[f"s{s} learnt"] = r.learnt
    return row


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [HERE / f"{n}.pt" for n in NAMES]
    table = pd.DataFrame([describe(p) for p in paths])
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 3):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
