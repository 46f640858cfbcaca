"""``python -m cka_lab.train CONFIG [--resume] [--max-iters N] [--out DIR]``: the torchrun entry point.

``torchrun --nproc_per_node N -m cka_lab.train CONFIG`` trains with DistributedDataParallel (gloo on
CPU, nccl on CUDA); without torchrun it is one process, like ``cka-lab train``.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: with the default (spinning) wait policy, a CPU shared with other
# processes makes every small parallel op wait for a descheduled thread (20-40x slower steps).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402

from cka_lab.errors import CkaLabError  # noqa: E402
from cka_lab.train.launch import add_arguments, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cka_lab.train", description="Train an EDT from a TOML config.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except CkaLabError as exc:
        print(f"cka-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cka-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
