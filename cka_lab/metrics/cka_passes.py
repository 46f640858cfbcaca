"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.passes`."""

import sys

from cka_lab.metrics.cka import passes as _moved

sys.modules[__name__] = _moved
