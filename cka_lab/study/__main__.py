"""``torchrun --nproc_per_node N -m cka_lab.study STUDY.toml --out DIR``: a study spread over N devices.

Each process trains its share of the runs on its own GPU (rank r: runs r, r+N, ...; fine-tunes wait for
their pre-trainings); rank 0 then evaluates, contrasts and reports. Without torchrun: like ``cka-lab study``.
"""

from __future__ import annotations

import sys

from cka_lab.runtime import module_main
from cka_lab.study.launch import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, prog="python -m cka_lab.study", description="Run a pre-training study.",
                       add_arguments=add_arguments, run=run_from_args)


if __name__ == "__main__":
    sys.exit(main())
