"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.protocol`."""

import sys

from cka_lab.metrics.cka import protocol as _moved

sys.modules[__name__] = _moved
