"""Kept import path: the attention sentences are now :mod:`cka_lab.analysis.findings` (metrics states
numbers; analysis words them). Imported by name, when this old path is used, so that metrics never loads analysis."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("cka_lab.analysis.findings")
