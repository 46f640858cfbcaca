"""CSV logs and the progress bar of a training run.

``train_log.csv``: ``iteration, lr, loss, loss_<task>..., sec_per_iter, data_share, patches_per_s``
(means over the last ``log_every`` iterations; ``data_share`` is the fraction of the wall time
spent waiting for batches), then with ``schedule.diagnostics`` the per-stage columns
``s{i}_q_update_ratio, s{i}_k_update_ratio, s{i}_v_update_ratio, s{i}_attn_entropy_rel,
s{i}_logit_spread`` (:mod:`cka_lab.train.diagnostics`). ``val_log.csv``: ``iteration, task, psnr, ssim, images, seconds``.
On ``--resume`` the rows written after the checkpoint the run resumes from are dropped, so a log
never holds an iteration twice.

The progress bar (tqdm) is shown only on a terminal, and never when ``CKA_LAB_NO_PROGRESS=1``.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

__all__ = ["CsvLog", "progress_enabled", "make_progress", "say"]


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
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
