"""Table pages show every row (continued pages, never a cut), wrap long titles and mark continued parts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cka_lab.reports.pages import table_pages


def _rows(pages) -> list[list[str]]:
    rows = []
    for fig in pages:
        for ax in fig.axes:
            for table in ax.tables:
                cells = table.get_celld()
                n_rows = max(r for r, _ in cells) + 1
                n_cols = max(c for _, c in cells) + 1
                rows += [[cells[r, c].get_text().get_text() for c in range(n_cols)] for r in range(1, n_rows)]
    return rows


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_every_row_is_shown_across_continued_pages():
    df = pd.DataFrame({"run": [f"x2-scratch-s{i}" for i in range(95)], "psnr": np.linspace(30, 36, 95),
                       "missing": np.nan})
    pages = table_pages("Per model", [("small", df.iloc[:3]), ("all runs", df)], note="a note")
    assert len(pages) >= 3
    rows = _rows(pages)
    assert [r[0] for r in rows] == list(df.run[:3]) + list(df.run)
    assert rows[0][1] == "30.000" and rows[0][2] == "n/a"
    assert all("(continued)" in " ".join(_texts(p)) for p in pages[1:])
    assert "a note" in _texts(pages[-1])


def test_long_title_wraps_and_empty_table_says_so():
    title = "numbers (" + "unbiased-minibatch CKA, layers default, " * 4 + ")"
    pages = table_pages(title, [("none", pd.DataFrame(columns=["a", "b"]))])
    heads = [t for t in _texts(pages[0]) if t.startswith("numbers") or t in title]
    assert len(heads) >= 2 and all(len(h) <= 105 for h in heads)
    assert _rows(pages) == [["(no rows)", ""]]


def test_missing_entries_of_text_columns_are_n_a():
    df = pd.DataFrame({"protocol": ["paper", np.nan, None], "p": [0.01, np.nan, 0.5]})
    assert _rows(table_pages("t", [("", df)])) == [["paper", "0.010"], ["n/a", "n/a"], ["n/a", "0.500"]]
