"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.inputs`."""

import sys

from cka_lab.metrics.cka import inputs as _moved

sys.modules[__name__] = _moved
