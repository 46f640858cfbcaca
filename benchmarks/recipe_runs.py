"""The README's recipe table, from the logs of finished (or stopped) training runs.

    python benchmarks/recipe_runs.py RUN_DIR [RUN_DIR ...] [--at 500 1000 1500 2000] [--markdown]

For each run folder (``cka-lab train`` output: ``train_log.csv``, ``val_log.csv``, ``config.toml``):
the recipe (lr, q/k lr scale, patch, batch), the last logged iteration and its wall time
(:func:`cka_lab.train.logs.training_wall_time`: iterations per log row x ``sec_per_iter``; older rows left
validation and checkpoint time out), the validation
PSNR at the last validation, and, at the iterations ``--at`` (the last log row at or before each), per stage the
fraction of plain-block heads at or below 0.95 of uniform entropy (``s{i}_plain_learnt``), so that one
row shows whether attention learnt and whether it stayed. Baselines are not computed here: the
README gives them beside the table (``cka-lab evaluate`` prints them).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import pandas as pd

from cka_lab.train.logs import training_wall_time


def run_row(run: Path, at: list[float]) -> dict:
    tl = pd.read_csv(run / "train_log.csv")
    vl = pd.read_csv(run / "val_log.csv") if (run / "val_log.csv").is_file() else pd.DataFrame()
    cfg = tomllib.loads((run / "config.toml").read_text()) if (run / "config.toml").is_file() else {}
    o, s, d = cfg.get("optim", {}), cfg.get("schedule", {}), cfg.get("data", {})
    log_every = int(s.get("log_every", 10))
    tl = tl.sort_values("iteration")
    last = int(tl["iteration"].iloc[-1])
    stages = sorted(int(c[1:].split("_")[0]) for c in tl.columns if c.endswith("_plain_learnt"))
    row = {"run": run.name, "arch": cfg.get("model", {}).get("arch", "?"), "lr": o.get("lr"),
           "qk_lr_scale": o.get("qk_lr_scale", 1.0), "patch": d.get("patch_size"), "batch": s.get("batch_size"),
           "iterations": last, "of": s.get("iterations"),
           "wall_min": training_wall_time(run / "train_log.csv") / 60}
    if not vl.empty:
        lastv = vl[vl["iteration"] == vl["iteration"].max()]
        row.update({f"psnr_{t}": float(p) for t, p in zip(lastv["task"], lastv["psnr"])})
        row["val_iteration"] = int(vl["iteration"].max())
    for target in at:
        rows = tl[tl["iteration"] <= target]
        if rows.empty or target > last + log_every:
            row[f"learnt@{target}"] = ""
            continue
        it = rows.iloc[-1]
        vals = [it.get(f"s{k}_plain_learnt") for k in stages]
        row[f"learnt@{target}"] = " / ".join("-" if pd.isna(v) else f"{v:.2f}" for v in vals)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--at", type=int, nargs="+", default=[500, 1000, 1500, 2000])
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    rows = []
    for r in args.runs:
        if not (r / "train_log.csv").is_file():
            print(f"{r}: no train_log.csv", file=sys.stderr)
            return 2
        rows.append(run_row(r, args.at))
    df = pd.DataFrame(rows)
    if args.markdown:
        cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in df.itertuples(index=False)]
        print("| " + " | ".join(df.columns) + " |")
        print("|" + "---|" * len(df.columns))
        for c in cells:
            print("| " + " | ".join(c) + " |")
    else:
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
