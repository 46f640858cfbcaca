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


#: A log larger than this is not a cka-lab training log (500k iterations logged every 10 are ~50 MB).
MAX_LOG_BYTES = 1 << 30


def _read_csv(path: Path):
    """A log CSV, checked first (a regular file of sane size); malformed rows are skipped and counted."""
    import sys

    import pandas as pd

    from cka_lab.io.inputs import open_input

    bad: list[list[str]] = []
    try:
        with open_input(path, "log", max_bytes=MAX_LOG_BYTES, min_bytes=0) as f:
            df = pd.read_csv(f, on_bad_lines=bad.append, engine="python")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CkaLabError(f"cannot read {path}: {first}") from None
    if bad:
        print(f"cka-lab: note: {path}: skipped {len(bad)} malformed row(s)", file=sys.stderr)
    return df


def run(args: argparse.Namespace) -> int:
    from cka_lab.plots import save_figure
    from cka_lab.plots.training import plot_training_log

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CkaLabError(f"run folder {run_dir} not found")
    train_csv = run_dir / "train_log.csv"
    if not train_csv.exists():
        raise CkaLabError(f"{run_dir} holds no train_log.csv: is it a cka-lab train run folder?")
    out = Path(args.out) if args.out else run_dir / "training.png"
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CkaLabError(f"--out {out}: use a .png, .svg or .pdf file name")
    val_csv = run_dir / "val_log.csv"
    val = _read_csv(val_csv) if val_csv.exists() and val_csv.stat().st_size else None
    heads_csv = run_dir / "attn_heads.csv"
    heads = _read_csv(heads_csv) if heads_csv.exists() and heads_csv.stat().st_size else None
    fig = plot_training_log(_read_csv(train_csv), val, title=run_dir.resolve().name, heads=heads)
    save_figure(fig, out)
    print(out)
    return 0
