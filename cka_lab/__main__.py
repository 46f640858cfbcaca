"""``python -m cka_lab``: the ``cka-lab`` command."""

from cka_lab.cli import console

console("cka_lab")
