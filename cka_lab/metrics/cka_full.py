"""Kept import path: this module is now :mod:`cka_lab.metrics.cka.full`."""

import sys

from cka_lab.metrics.cka import full as _moved

sys.modules[__name__] = _moved
