"""Which training recipe makes EDT learn attention at a small budget? (issue 12, item 5)

    python benchmarks/recipe_study.py                          # the study: 6 settings x 2 seeds
    python benchmarks/recipe_study.py --iterations 50 --batch 4 --seeds 1 --settings official eps1e-15

Every setting trains EDT-T SR x2 from scratch with ``cka-lab train`` (the real loop, config and
data) for the **same** budget: ``--iterations`` steps of ``--batch`` LR patches of ``--patch`` px
(default 200 x 8 x 24 px), one process on the CPU, ``--threads`` threads. Training data:
``[--data-root]/train/Sun_Hays80`` (reduce 2) and ``train/BSD400_gray``, drawn by patch count (the
bundled configs' data). At the end each run reports

* ``H_s0 .. H_s3``: attention entropy relative to uniform per stage (1 = uniform; the table shows
  ``focus = (1 - H/Hmax) * 1e6``), and ``spread``: the mean within-row std of the attention logits
  -- both on the run's fixed probe batch (:mod:`cka_lab.train.diagnostics`);
* ``qk_upd`` / ``v_upd``: update-to-weight ratio of q and k / of v over the last log interval
  (``iterations / 5`` steps), mean over stages;
* ``psnr``: validation PSNR on Set5 x2 (Y channel, border 2), every image centre-cropped to
  ``--val-crop`` LR px (``--val-crop 0``: whole images);
* ``loss``: the L1 loss of the last log interval.

One row per (setting, seed) goes to ``--csv`` as soon as the run ends (an interrupted study
continues where it stopped: rows already in the CSV are not rerun); the table printed is the mean
over seeds and, in ``*_sd``, their standard deviation (the seeds are the error bars); ``dpsnr`` is
the PSNR minus the official recipe's of the same seed (same initial weights and batches), averaged.

Settings (the official EDT recipe: Adam lr 2e-4, betas (0.9, 0.99), eps 1e-8, multi-step decay):

=================  ==========================================================================
official           lr 2e-4, eps 1e-8, milestones [0.5, 0.8, 0.9, 0.95], gamma 0.5, no warm-up
eps1e-15           official with Adam eps 1e-15
warmup             official with a linear warm-up over the first 10 % of the iterations
lr5e-4             official with lr 5e-4
eps+warmup+lr      eps 1e-15, warm-up 10 %, lr 5e-4, multi-step
eps+warmup+cosine  eps 1e-15, warm-up 10 %, lr 5e-4, cosine decay to 0
=================  ==========================================================================

Budget: sized for <= 15 minutes on 2 idle CPU cores with fused attention (about twice that with
the explicit attention maps).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see cka_lab/__init__.py)
os.environ.setdefault("CKA_LAB_NO_PROGRESS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from cka_lab.train.config import parse_config  # noqa: E402
from cka_lab.train.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = 'lr = 2e-4\nbetas = [0.9, 0.99]\neps = 1e-8\nmilestones = [0.5, 0.8, 0.9, 0.95]\ngamma = 0.5\n'


@dataclass(frozen=True)
class Setting:
    name: str
    optim: str  # the [optim] table's body


SETTINGS = (
    Setting("official", OFFICIAL),
    Setting("eps1e-15", OFFICIAL.replace("eps = 1e-8", "eps = 1e-15")),
    Setting("warmup", OFFICIAL + "warmup = 0.1\n"),
    Setting("lr5e-4", OFFICIAL.replace("lr = 2e-4", "lr = 5e-4")),
    Setting("eps+warmup+lr", OFFICIAL.replace("eps = 1e-8", "eps = 1e-15").replace("lr = 2e-4", "lr = 5e-4") + "warmup = 0.1\n"),
    Setting("eps+warmup+cosine", 'lr = 5e-4\nbetas = [0.9, 0.99]\neps = 1e-15\nlr_schedule = "cosine"\nwarmup = 0.1\n'),
)


@dataclass(frozen=True)
class StudySpec:
    iterations: int
    batch: int
    patch: int
    threads: int
    val_crop: int
    probe: int
    data_root: Path
    work: Path


def config_text(spec: StudySpec, setting: Setting, seed: int) -> str:
    log_every = max(1, spec.iterations // 5)
    return f"""
[run]
name = "{setting.name}_s{seed}"
seed = {seed}
device = "cpu"
threads = {spec.threads}

[model]
arch = "SRx2_EDTT"

[data]
root = "{spec.data_root}"
patch_size = {spec.patch}
sr = [{{ path = "train/Sun_Hays80", reduce = 2 }}, "train/BSD400_gray"]

[val]
sr = "sr/Set5"
crop = {spec.val_crop}

[optim]
{setting.optim}
[schedule]
iterations = {spec.iterations}
batch_size = {spec.batch}
ckpt_every = {spec.iterations}
log_every = {log_every}
probe_size = {spec.probe}
"""


def run_one(spec: StudySpec, setting: Setting, seed: int) -> dict:
    cfg = parse_config(config_text(spec, setting, seed), source=spec.work / f"{setting.name}_s{seed}.toml")
    out = spec.work / f"{setting.name}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg, out=out)
    seconds = time.perf_counter() - t0
    log = pd.read_csv(out / "train_log.csv")
    last = log.iloc[-1]
    stages = sorted(int(c[1:].split("_")[0]) for c in log.columns if c.endswith("_plain_entropy_rel"))
    row = {"setting": setting.name, "seed": seed, "psnr": result.val["x2"].psnr, "loss": float(last["loss"])}
    row.update({f"H_s{s}": float(last[f"s{s}_plain_entropy_rel"]) for s in stages})  # plain blocks
    row.update({f"learnt_s{s}": float(last[f"s{s}_plain_learnt"]) for s in stages})
    row["spread"] = float(sum(last[f"s{s}_plain_logit_spread"] for s in stages) / len(stages))
    row["qk_upd"] = float(sum(last[f"s{s}_{p}_update_ratio"] for s in stages for p in "qk") / (2 * len(stages)))
    row["v_upd"] = float(sum(last[f"s{s}_v_update_ratio"] for s in stages) / len(stages))
    row["seconds"] = seconds
    shutil.rmtree(out, ignore_errors=True)  # checkpoints are not needed
    return row


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per setting; ``*_sd`` the standard deviation over seeds.

    Attention entropy is shown as ``1 - H/Hmax`` in parts per million (``focus_s{i}``, 0 = uniform),
    since at small budgets every H/Hmax rounds to 1.0000. ``dpsnr``: PSNR minus the official
    recipe's of the same seed (same initial weights and batches), averaged over seeds.
    """
    order = [s.name for s in SETTINGS if s.name in set(rows["setting"])]
    h_cols = [c for c in rows.columns if c.startswith("H_s")]
    rows = rows.copy()
    for c in h_cols:
        rows["focus_s" + c[3:]] = (1.0 - rows[c]) * 1e6
    rows["focus"] = rows[["focus_s" + c[3:] for c in h_cols]].mean(axis=1)
    official = rows[rows["setting"] == "official"].set_index("seed")["psnr"]
    rows["dpsnr"] = rows["psnr"] - rows["seed"].map(official)
    g = rows.groupby("setting", sort=False)
    table = pd.DataFrame({"seeds": g.size(), "psnr": g["psnr"].mean(), "psnr_sd": g["psnr"].std(ddof=1),
                          "dpsnr": g["dpsnr"].mean(), "loss": g["loss"].mean()})
    for c in h_cols:
        table["focus_s" + c[3:]] = g["focus_s" + c[3:]].mean()
    table["focus"] = g["focus"].mean()
    table["focus_sd"] = g["focus"].std(ddof=1)
    for c in ("spread", "qk_upd", "v_upd", "seconds"):
        table[c] = g[c].mean()
    return table.loc[order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=24, help="LR patch (a multiple of 24)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-crop", type=int, default=96)
    p.add_argument("--probe", type=int, default=4, help="probe patches for the attention statistics")
    p.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS], choices=[s.name for s in SETTINGS])
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("CKA_LAB_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--csv", type=Path, default=Path("runs/recipe_study/recipe_study.csv"))
    p.add_argument("--table-only", action="store_true", help="print the table of the rows in --csv, run nothing")
    args = p.parse_args(argv)
    if args.table_only:
        if not args.csv.is_file():
            print(f"recipe_study: {args.csv} not found", file=sys.stderr)
            return 2
        with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            print(summarise(pd.read_csv(args.csv)))
        return 0
    if not (args.data_root / "train" / "Sun_Hays80").is_dir() or not (args.data_root / "sr" / "Set5").is_dir():
        print(f"recipe_study: needs train/Sun_Hays80, train/BSD400_gray and sr/Set5 under {args.data_root} (--data-root)",
              file=sys.stderr)
        return 2
    spec = StudySpec(args.iterations, args.batch, args.patch, args.threads, args.val_crop, args.probe,
                     args.data_root.resolve(), args.csv.resolve().parent)
    spec.work.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(args.csv) if args.csv.exists() else pd.DataFrame(columns=["setting", "seed"])
    print(f"budget per run: {spec.iterations} iterations x {spec.batch} patches of {spec.patch} px, "
          f"{spec.threads} thread(s); results -> {args.csv}", flush=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        for setting in (s for s in SETTINGS if s.name in args.settings):
            if ((done["setting"] == setting.name) & (done["seed"] == seed)).any():
                continue
            row = run_one(spec, setting, seed)
            print(f"  {setting.name:18s} seed {seed}: PSNR {row['psnr']:.2f} dB, "
                  f"H/Hmax {' '.join(f'{row[k]:.3f}' for k in row if k.startswith('H_s'))}, "
                  f"spread {row['spread']:.3g}, {row['seconds']:.0f} s", flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True) if len(done) else pd.DataFrame([row])
            done.to_csv(args.csv, index=False)
    rows = done[done["setting"].isin(args.settings) & done["seed"].isin(list(seeds))]
    with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
