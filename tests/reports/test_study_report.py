"""The study PDF from a hand-made content: every table row on its pages, one page per figure, nothing cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cka_lab.reports.study_report import StudyReportContent, write_study_report

pdfium = pytest.importorskip("pypdfium2")


def _content(n_models: int) -> StudyReportContent:
    rows = [{"target": "x2", "condition": c, "seed": s, "psnr": 35 + 0.1 * s + (c == "related") * 0.2,
             "ssim": 0.95, "dataset": "Set5", "images": 5}
            for c in ("scratch", "related") for s in range(n_models // 2)]
    scores = pd.DataFrame(rows)
    summary = scores.groupby(["target", "condition"], as_index=False)["psnr"].mean()
    gains = pd.DataFrame([{"target": "x2", "condition": "related", "seeds": 3, "psnr_gain": 0.2,
                           "psnr_gain_lower": 0.1, "psnr_gain_upper": 0.3}])
    claims = pd.DataFrame([{"claim": f"claim {i}", "protocol": "", "status": "not decidable at this scale",
                            "effect": 0.1, "lower": -0.1, "upper": 0.3, "unit": "dB", "n": 3, "p": 0.4,
                            "p_holm": np.nan} for i in range(45)])
    models = pd.DataFrame([{"run": f"x2-scratch-s{i}", "psnr": 35.0, "baseline_psnr": 33.7} for i in range(n_models)])
    return StudyReportContent(
        study_name="demo", hardware="2 CPU cores", protocol="unbiased-minibatch CKA, N=16",
        title_lines=["## Design", "A line of the title page."], verdicts=[f"claim {i}: NOT DECIDABLE" for i in range(45)],
        findings=["(a) finding"] * 45, scores=scores, summary=summary, gains=gains, claims=claims, models=models,
        heatmaps=[("x2: CKA maps", [("scratch", np.eye(4))], [0, 2])])


def test_the_study_report_shows_every_claim_and_model(tmp_path):
    path = write_study_report(tmp_path / "report.pdf", _content(n_models=50))
    doc = pdfium.PdfDocument(str(path))
    text = " ".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    assert "45. claim 44" in text  # the claims table is not cut at 40 rows
    assert "x2-scratch-s49" in text  # nor the per-model table
    assert "Pre-training study 'demo'" in text and "x2: CKA maps" in text


def test_same_layer_curves_are_seed_means_with_their_range_beside_the_control():
    from matplotlib.collections import PolyCollection

    from cka_lab.reports.study_report import _curves_figure

    seeds = [np.array([0.5, 0.6, 0.7]), np.array([0.7, 0.8, 0.9]), np.array([0.6, 0.7, np.nan])]
    control = {"control: x2 scratch seed 0 vs 1": np.array([0.9, 0.9, 0.9]),
               "control: x2 scratch seed 0 vs 2": np.array([0.8, 0.8, 0.8])}
    fig = _curves_figure("t", {"related vs scratch": seeds, "single vs scratch": [np.array([0.1, 0.2, 0.3])]},
                         control, "same-layer CKA", "footer")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln.get_ydata() for ln in ax.get_lines()}
    assert set(lines) == {"related vs scratch (mean of 3 seeds; band: their range)", "single vs scratch",
                          "control: x2 scratch (mean of 2 seed pairs; band: their range)"}
    np.testing.assert_allclose(lines["related vs scratch (mean of 3 seeds; band: their range)"], [0.6, 0.7, 0.8])
    np.testing.assert_allclose(lines["control: x2 scratch (mean of 2 seed pairs; band: their range)"], [0.85] * 3)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one per curve of several seeds or pairs; none for the single seed
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 0.5) and np.isclose(ys.max(), 0.9)  # the range of the seeds
