"""Kept import path: this module is now :mod:`cka_lab.metrics.attention.baselines`."""

import sys

from cka_lab.metrics.attention import baselines as _moved

sys.modules[__name__] = _moved
