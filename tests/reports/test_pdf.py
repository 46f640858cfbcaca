"""The PDF report opens, has the pages it announces, and every page shows something."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.analysis.compare import probe_loader
from cka_lab.analysis.contrast import contrast_models
from cka_lab.analysis.spec import AnalysisSpec
from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt
from cka_lab.reports import ModelInfo, findings, write_report


def render_pages(pdf: Path, out: Path, dpi: int = 40) -> list[Path]:
    """PDF -> one PNG per page, with poppler's pdftoppm when installed, else pypdfium2."""
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(out / "page")], check=True)
        return sorted(out.glob("page*.png"))
    pdfium = pytest.importorskip("pypdfium2", reason="needs pdftoppm (poppler-utils) or pypdfium2 to render PDFs")
    doc = pdfium.PdfDocument(str(pdf))
    paths = []
    for i in range(len(doc)):
        path = out / f"page-{i + 1:02d}.png"
        doc[i].render(scale=dpi / 72).to_pil().save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def contrast():
    torch.manual_seed(0)
    a = create_edt("SRx2_EDTT").eval()
    torch.manual_seed(1)
    b = create_edt("SRx2_EDTT").eval()
    batches, _ = probe_loader(None, patch=48, n_samples=8, seed=0, batch_size=4)
    return contrast_models(a, b, AnalysisSpec(layers="body.layers.*", unit_size=4), batches=batches,
                           name_a="scratch", name_b="pretrained", progress=False)


def _models():
    return [ModelInfo("scratch", "a.pt", "SRx2_EDTT", ("x2",), 916924, "0" * 64, {"run": "r", "iteration": 3}),
            ModelInfo("pretrained", "b.pt", "SRx2_EDTT", ("x2",), 916924, "1" * 64, {})]


def test_every_page_of_the_report_renders_with_content(contrast, tmp_path):
    pdf = write_report(tmp_path / "r.pdf", [contrast], _models(), title="test report", settings={"crops": "8"})
    pages = render_pages(pdf, tmp_path)
    # title, within maps, difference, cross map, attention locality per block and per stage, tables (the
    # 32-row attention table continues on a second page: rows are never cut), findings
    assert len(pages) == 9
    for page in pages:
        grey = np.asarray(Image.open(page).convert("L"), dtype=float)
        ink = (grey < 200).mean()
        assert ink > 0.003, f"{page.name} is (nearly) blank"
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_findings_quote_the_measured_numbers(contrast):
    text = " ".join(findings(contrast))
    assert f"{contrast.summary()['mean_cka_a']:.3f}" in text
    assert "Protocol: unbiased-minibatch CKA, layers body.layers.*, update features, N=8" in text
    assert "Controls: probe-draw" in text and "Seed-to-seed: none" in text
    assert "Not decidable at this scale: 2 resampling units" in text
    assert "attends more locally" not in text  # untrained models: attention indistinguishable from uniform


def test_an_unwritable_report_path_fails_in_one_line_and_leaves_nothing(contrast, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CkaLabError, match="cannot (write|create)"):
        write_report(blocker / "r.pdf", [contrast], _models())
    with pytest.raises(CkaLabError, match="must end in .pdf"):
        write_report(tmp_path / "r.png", [contrast], _models())
