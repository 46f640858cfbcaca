"""A task key parsed once: ``x2`` (SR x2), ``g25`` (Gaussian denoising, sigma 25), ``L`` / ``H`` (light / heavy rain).

>>> parse_task("x3")
Task(key='x3', kind='sr', level=3)
>>> parse_task("g25").sigma, parse_task("g25").scale, parse_task("L").kind
(25.0, 1, 'dr')
>>> parse_task("g25").token_stride(depth=2, sf=False)  # input pixels per body token side
4
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cka_lab.errors import CkaLabError

__all__ = ["KINDS", "RAIN_LEVELS", "TASK_KEYS", "Task", "parse_task", "task_kind", "token_stride"]

#: The tasks of the EDT paper, in the official order.
TASK_KEYS = ("x2", "x3", "x4", "g15", "g25", "g50", "L", "H")
KINDS = ("sr", "dn", "dr")  # super-resolution, denoising, deraining
RAIN_LEVELS = ("L", "H")

_KEY = re.compile(r"(?:x(?P<scale>\d+)|g(?P<sigma>\d+)|(?P<rain>[LH]))")


def token_stride(kind: str, depth: int, sf: bool) -> int:
    """Input pixels per body token side of a head: ``2**depth`` for the denoise/derain heads that
    downsample (4 for EDT's depth 2), 1 for SR heads (the body runs at the low-resolution input's size)
    and for SF models (no downsampling)."""
    return 1 if kind == "sr" or sf else 2**depth


@dataclass(frozen=True)
class Task:
    """A parsed task key: ``kind`` is ``sr``, ``dn`` or ``dr``; ``level`` the scale (int), the noise
    sigma (int) or the rain level (``"L"`` / ``"H"``)."""

    key: str
    kind: str
    level: int | str

    @property
    def scale(self) -> int:
        """Output pixels per input pixel side: the SR scale, 1 otherwise."""
        return int(self.level) if self.kind == "sr" else 1

    @property
    def sigma(self) -> float | None:
        """The noise sigma (0-255 scale) of a denoising task, None otherwise."""
        return float(self.level) if self.kind == "dn" else None

    def token_stride(self, depth: int, sf: bool) -> int:
        """See :func:`token_stride`."""
        return token_stride(self.kind, depth, sf)


def parse_task(key: str) -> Task:
    """``x<scale>``, ``g<sigma>`` (both positive), ``L`` or ``H`` -> :class:`Task`; anything else: a one-line error."""
    text = str(key).strip()
    m = _KEY.fullmatch(text)
    if m and m["scale"] is not None and int(m["scale"]) >= 1:
        return Task(text, "sr", int(m["scale"]))
    if m and m["sigma"] is not None and int(m["sigma"]) >= 1:
        return Task(text, "dn", int(m["sigma"]))
    if m and m["rain"] is not None:
        return Task(text, "dr", m["rain"])
    raise CkaLabError(f"unknown task {key!r}; use one of {', '.join(TASK_KEYS)}")


def task_kind(key: str) -> str:
    """``x2 -> sr``, ``g25 -> dn``, ``L -> dr``."""
    return parse_task(key).kind
