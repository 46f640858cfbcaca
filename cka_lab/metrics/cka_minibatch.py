"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.minibatch`."""

import sys

from cka_lab.metrics.cka import minibatch as _moved

sys.modules[__name__] = _moved
