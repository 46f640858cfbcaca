"""``cka-lab plot-log RUN_DIR [--out PNG]``: loss, validation PSNR and attention diagnostics of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from cka_lab.errors import CkaLabError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot-log",
        help="draw a training run's loss, validation PSNR and attention diagnostics (PNG)",
        description="Read RUN_DIR/train_log.csv (and val_log.csv when present) and draw the loss, the learning rate, "
        "validation PSNR and, per stage (plain and shifted blocks apart), attention entropy relative to uniform, the "
        "fraction of learnt heads, logit spread, the q/k/v update-to-weight ratios and every head's entropy at the "
        "last log row (attn_heads.csv) into RUN_DIR/training.png.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a cka-lab train run folder (holds train_log.csv)")
    p.add_argument("--out", default=None, help="output image (default RUN_DIR/training.png; .png, .svg or .pdf)")
    p.set_defaults(func=run)


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CkaLabError(f"cannot read {path}: {first}") from None


def run(args: argparse.Namespace) -> int:
    from cka_lab.plots import save_figure
    from cka_lab.plots.training import plot_training_log

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CkaLabError(f"run folder {run_dir} not found")
    train_csv = run_dir / "train_log.csv"
    if not train_csv.is_file():
        raise CkaLabError(f"{run_dir} holds no train_log.csv: is it a cka-lab train run folder?")
    out = Path(args.out) if args.out else run_dir / "training.png"
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CkaLabError(f"--out {out}: use a .png, .svg or .pdf file name")
    val_csv = run_dir / "val_log.csv"
    val = _read_csv(val_csv) if val_csv.is_file() and val_csv.stat().st_size else None
    heads_csv = run_dir / "attn_heads.csv"
    heads = _read_csv(heads_csv) if heads_csv.is_file() and heads_csv.stat().st_size else None
    fig = plot_training_log(_read_csv(train_csv), val, title=run_dir.resolve().name, heads=heads)
    save_figure(fig, out)
    print(out)
    return 0
