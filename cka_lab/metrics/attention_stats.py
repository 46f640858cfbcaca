"""Kept import path: this module is now :mod:`cka_lab.metrics.attention.stats`."""

import sys

from cka_lab.metrics.attention import stats as _moved

sys.modules[__name__] = _moved
