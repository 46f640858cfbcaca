"""Kept import path: this module is now :mod:`cka_lab.metrics.attention.summary`."""

import sys

from cka_lab.metrics.attention import summary as _moved

sys.modules[__name__] = _moved
