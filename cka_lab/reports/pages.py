"""Table pages for the PDF reports: a titled A4-landscape page (or as many as the rows need) per list of tables.

Every table is shown whole: rows go on to "(continued)" pages instead of being cut, the title and captions are
wrapped to the page, and the columns are as wide as their longest entry (the font shrinks for a table that would
not fit the width).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cka_lab.analysis.findings import format_number

__all__ = ["A4_LANDSCAPE", "table_pages"]

A4_LANDSCAPE = (11.69, 8.27)  # inches

_ROW = 0.024  # row height, figure fraction (at the 7.5 pt table font)
_CHAR = 0.0053  # width of one character at 7.5 pt, figure fraction of the A4-landscape width
_LEFT, _WIDTH, _BOTTOM = 0.05, 0.9, 0.07


def _cell(v: object, digits: int) -> str:
    """A table entry as text: floats with ``digits`` decimals, ``n/a`` for anything missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return format_number(float(v), digits)
    return str(v)


def _shown(df: pd.DataFrame, digits: int) -> pd.DataFrame:
    """Every entry as a Python ``str`` (pandas' own string dtype keeps NaN: not used)."""
    return pd.DataFrame({c: [_cell(v, digits) for v in df[c].tolist()] for c in df.columns}, columns=df.columns,
                        dtype=object)


def _widths(shown: pd.DataFrame) -> list[int]:
    """Characters per column: its header or its longest entry, plus padding."""
    return [max([len(str(c))] + [len(v) for v in shown[c]]) + 2 for c in shown.columns]


def table_pages(
    title: str,
    tables: Sequence[tuple[str, pd.DataFrame]],
    *,
    footer: str = "",
    note: str = "",
    digits: int = 3,
) -> list[Figure]:
    """The ``(caption, table)`` pairs under ``title`` on as many pages as their rows need.

    Floats are shown with ``digits`` decimals (``n/a`` for NaN). ``footer`` goes at the foot of every
    page, ``note`` (a sentence about the table) under the last table.
    """
    pages: list[Figure] = []
    fig, y = None, 0.0

    def new_page() -> tuple[Figure, float]:
        f = Figure(figsize=A4_LANDSCAPE)
        head = title if not pages else f"{title} (continued)"
        lines = textwrap.wrap(head, 105) or [""]
        for k, line in enumerate(lines):
            f.text(_LEFT, 0.95 - 0.034 * k, line, fontsize=14, weight="bold", va="top")
        if footer:
            for k, line in enumerate(textwrap.wrap(footer, 190)[:2]):
                f.text(_LEFT, 0.03 - 0.016 * k, line, fontsize=7, color="0.35", va="bottom")
        pages.append(f)
        return f, 0.95 - 0.034 * len(lines) - 0.01

    for caption, df in tables:
        shown = _shown(df, digits)
        if shown.empty:
            shown = pd.DataFrame([["(no rows)"] + [""] * (len(shown.columns) - 1)], columns=shown.columns)
        chars = _widths(shown)
        need = sum(chars) * _CHAR
        width = min(_WIDTH, need)
        font = 7.5 if need <= _WIDTH else max(5.0, 7.5 * _WIDTH / need)
        row = _ROW * max(0.75, font / 7.5)
        start, first = 0, True
        while first or start < len(shown):
            cap_lines = textwrap.wrap(caption + ("" if first else " (continued)"), 170) if caption else []
            if fig is None or y - 0.022 * len(cap_lines) - 4 * row < _BOTTOM:
                fig, y = new_page()
            for line in cap_lines:
                fig.text(_LEFT, y, line, fontsize=9, va="top")
                y -= 0.022
            fits = max(1, int((y - _BOTTOM) / row) - 1)  # rows under the header
            chunk = shown.iloc[start:start + fits]
            height = row * (len(chunk) + 1)
            ax = fig.add_axes([_LEFT, y - height, width, height])
            ax.axis("off")
            table = ax.table(cellText=chunk.to_numpy(),
                             colLabels=[str(c) for c in shown.columns], colWidths=chars, cellLoc="center",
                             bbox=[0, 0, 1, 1])
            table.auto_set_font_size(False)
            table.set_fontsize(font)
            for (r, _c), cell in table.get_celld().items():
                cell.set_linewidth(0.5)
                if r == 0:
                    cell.set_facecolor("0.92")
            y -= height + 0.03
            start += len(chunk)
            first = False
    if note and fig is not None:
        for line in textwrap.wrap(note, 180):
            if y < _BOTTOM:
                fig, y = new_page()
            fig.text(_LEFT, y, line, fontsize=8, va="top")
            y -= 0.02
    return pages
