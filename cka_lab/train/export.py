"""Strip a training checkpoint down to the weights a user analyses.

``last.pt`` of a run holds the model, the optimizer, the scheduler and RNG states (~3x the weights);
:func:`export_weights` writes the model alone, in cka_lab format without mask buffers, keeping the
run's metadata (run name, iteration, validation scores) and the config text for provenance::

    python -m cka_lab.train.export runs/edtt_srx2_scratch/last.pt checkpoints/edtt_srx2_scratch.pt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cka_lab.models.checkpoint import load_model, read_checkpoint, save_checkpoint


def export_weights(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the weights of checkpoint ``src`` (with its metadata and config text) to ``dst``."""
    ck = read_checkpoint(src)
    model = load_model(src)
    meta = dict(ck.meta)
    if ck.train:
        meta.setdefault("config_toml", ck.train.get("config_toml"))
        meta.setdefault("iteration", ck.train.get("iteration"))
    return save_checkpoint(dst, model, meta=meta)


def main(argv: list[str] | None = None) -> None:
    from cka_lab.errors import run_reporting_errors

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m cka_lab.train.export SRC.pt DST.pt")

    def _run(src: str, dst: str) -> int:
        path = export_weights(src, dst)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0

    raise SystemExit(run_reporting_errors(_run, *args))


if __name__ == "__main__":
    main()
