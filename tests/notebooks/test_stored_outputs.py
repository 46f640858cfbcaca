"""The committed notebooks carry their outputs: executed top to bottom, at N >= 64 probe crops, without errors.

These checks read the stored ``.ipynb`` files (fast); ``test_notebooks.py`` (slow) re-executes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
MIN_CROPS = 64  # issue 21: notebooks at N >= 64


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return str(data.get("text/plain", "")) + str(data.get("text/markdown", ""))


@pytest.mark.parametrize("name", ["fig2_cka.ipynb", "pretraining_effect.ipynb"])
def test_stored_notebook_was_executed_in_order_at_full_probe_size(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts), f"{name}: a code cell has no stored execution"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"{name}: cells not run top to bottom"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{name}: stored output has an error"
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2, f"{name}: figures not stored"
    ns = {int(n) for o in outputs for n in re.findall(r"\bN=(\d+)", _text(o))}
    assert ns, f"{name}: no stored output names its probe size (N=...)"
    assert min(ns) >= MIN_CROPS, f"{name}: stored outputs made with N={sorted(ns)}, below {MIN_CROPS}"
