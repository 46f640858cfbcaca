"""``python -m cka_lab.train CONFIG [--resume] [--max-iters N] [--out DIR]``: the torchrun entry point.

``torchrun --nproc_per_node N -m cka_lab.train CONFIG`` trains with DistributedDataParallel (gloo on
CPU, nccl on CUDA); without torchrun it is one process, like ``cka-lab train``.
"""

from __future__ import annotations

import sys

from cka_lab.runtime import module_main  # importing cka_lab sets OMP_WAIT_POLICY before torch loads
from cka_lab.train.launch import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, prog="python -m cka_lab.train", description="Train an EDT from a TOML config.",
                       add_arguments=add_arguments, run=run_from_args)


if __name__ == "__main__":
    sys.exit(main())
