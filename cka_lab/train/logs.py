"""CSV logs and the progress bar of a training run.

``train_log.csv``: ``iteration, lr, loss, loss_<task>..., sec_per_iter, data_share, patches_per_s``
(means over the last ``log_every`` iterations of wall-clock time, everything counted: the steps, the
diagnostics, validation and checkpoints; ``data_share`` is the fraction of it spent waiting for batches), then with ``schedule.diagnostics`` the per-stage columns
``s{i}_q_update_ratio, s{i}_k_update_ratio, s{i}_v_update_ratio`` and, for plain and shifted blocks
apart, ``s{i}_{plain,shifted}_{entropy_rel,learnt,sharpest,logit_spread}``, with every head's numbers in
``attn_heads.csv`` (:mod:`cka_lab.train.diagnostics`). ``val_log.csv``: ``iteration, task, psnr, ssim, images, seconds``.
On ``--resume`` the rows written after the checkpoint the run resumes from are dropped, and a fresh
run starts new logs (rows of an earlier run that left no checkpoint are dropped), so a log never holds
an iteration twice. Rows are appended with ``O_APPEND | O_NOFOLLOW`` (a symlink at a log path is
refused); rewrites go through :func:`cka_lab.io.atomic_write`.

The progress bar (tqdm) is shown only on a terminal, and never when ``CKA_LAB_NO_PROGRESS=1``.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from cka_lab.errors import CkaLabError
from cka_lab.io import atomic_write, open_append

__all__ = ["CsvLog", "progress_enabled", "make_progress", "say", "training_wall_time"]


def progress_enabled() -> bool:
    if os.environ.get("CKA_LAB_NO_PROGRESS", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


def make_progress(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="it", dynamic_ncols=True)


def say(msg: str) -> None:
    """Print a line without breaking the progress bar."""
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


class CsvLog:
    """An append-only CSV file with a fixed header (created on first use)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)

    def start(self) -> None:
        """Begin a new log (the header only), replacing rows an earlier run left in the folder."""
        with atomic_write(self.path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writeheader()

    def truncate_after(self, iteration: int) -> None:
        """Drop rows with ``iteration`` greater than the given one (used when resuming).

        A file with other columns (written by an older version) gets this log's header; columns it
        lacks stay empty in its old rows.
        """
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        keep = [r for r in rows if r.get("iteration", "").isdigit() and int(r["iteration"]) <= iteration]
        if len(keep) == len(rows) and header == self.columns:
            return
        with atomic_write(self.path, "w", newline="") as f:  # temp file, fsync, rename
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            with open_append(self.path) as f:  # O_APPEND | O_NOFOLLOW: a symlink here is refused
                w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
        except OSError as exc:
            raise CkaLabError(f"cannot write the log {str(self.path)!r} ({exc.strerror}): "
                              "free some space or choose another --out") from None


def training_wall_time(log: Path) -> float:
    """Seconds a run trained, from its ``train_log.csv``: the sum over rows of (iterations since the previous
    row, the first row counting from 0; never negative) x ``sec_per_iter`` (a wall-clock figure: diagnostics,
    validation and checkpoints included); rows without both numbers add nothing. NaN when the log is
    missing or unreadable or no row has both numbers."""
    total, prev, counted = 0.0, 0, 0
    try:
        with open(log, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    it = int(float(row["iteration"]))
                except (KeyError, TypeError, ValueError):  # a row without its iteration adds nothing
                    continue
                try:
                    sec = float(row["sec_per_iter"])
                except (KeyError, TypeError, ValueError):
                    sec = float("nan")
                if sec == sec:  # not NaN
                    total += max(0, it - prev) * sec
                    counted += 1
                prev = max(prev, it)
    except (OSError, UnicodeDecodeError, csv.Error):
        return float("nan")
    return total if counted else float("nan")
