"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.functional`."""

import sys

from cka_lab.metrics.cka import functional as _moved

sys.modules[__name__] = _moved
