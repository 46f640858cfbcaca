"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.result`."""

import sys

from cka_lab.metrics.cka import result as _moved

sys.modules[__name__] = _moved
