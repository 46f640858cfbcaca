"""The notebooks run top to bottom from a fresh clone, at the N = 64 probe crops of their stored outputs
(about 3 + 1.5 minutes on 2 cores; ``CKA_LAB_NB_SAMPLES`` sets another N)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# Slow (subprocesses, minutes on 2 cores): run by ``pytest -m slow``, as .ci/run does after the fast tests.
pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["fig2_cka.ipynb", "pretraining_effect.ipynb"])
def test_notebook_executes_without_error(name, monkeypatch):
    monkeypatch.setenv("CKA_LAB_NB_SAMPLES", os.environ.get("CKA_LAB_NB_SAMPLES", "64"))
    monkeypatch.setenv("CKA_LAB_NO_PROGRESS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the notebook should show its figures"
