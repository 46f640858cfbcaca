"""The tiny study end to end (every run, evaluation, contrast and the PDF), and killed-then-resumed
equal to uninterrupted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cka_lab.cli import main
from cka_lab.study import load_study, preset_path
from cka_lab.study.contrasts import plan_contrasts
from cka_lab.study.plan import plan_runs

# Slow (subprocesses, minutes on 2 cores): run by ``pytest -m slow``, as .ci/run does after the fast tests.
pytestmark = pytest.mark.slow

TABLES = ("scores", "score_summary", "gains", "same_layer_cka", "attention_locality", "claims", "baselines", "design",
          "models", "wall_time")


@pytest.fixture(scope="module")
def study_env(data_dir):
    old = {k: os.environ.get(k) for k in ("CKA_LAB_DATA", "CKA_LAB_NO_PROGRESS")}
    os.environ["CKA_LAB_DATA"] = str(data_dir)
    os.environ["CKA_LAB_NO_PROGRESS"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def finished(study_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "study"
    assert main(["study", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_every_run_evaluation_contrast_and_the_pdf(finished):
    spec = load_study(preset_path("tiny"))
    for run in plan_runs(spec):
        assert (finished / "models" / f"{run.name}.pt").is_file(), run.name
        assert (finished / "configs" / f"{run.name}.toml").is_file()
        if run.kind != "pretrain":
            ev = json.loads((finished / "eval" / f"{run.name}.json").read_text())
            assert ev["images"] == 2 and 5 < ev["psnr"] < 60
    for plan in plan_contrasts(spec):
        rec = json.loads((finished / "contrasts" / plan.pair / "record.json").read_text())
        assert len(rec["same_layer"]) == 24 and rec["protocol"].startswith("unbiased-minibatch CKA")
        assert rec["attention"], plan.pair  # locality against uniform for both models
        assert all(0 < row["locality"] < 2 for row in rec["attention"])
    for name in TABLES:
        assert (finished / "tables" / f"{name}.csv").is_file()
    claims = pd.read_csv(finished / "tables" / "claims.csv")
    findings_md = (finished / "findings.md").read_text(encoding="utf-8")  # the claims page, for README/notebooks
    assert all(c in findings_md for c in claims.claim) and f"(of {len(claims)} claims)" in findings_md
    assert set(claims.status) <= {"reproduced", "not reproduced", "not decidable at this scale"}
    assert len(claims) >= 4 and {"p", "p_holm", "effect", "lower", "upper", "tested"} <= set(claims.columns)
    # the trivial baselines, on the models' own evaluation images, in the score tables
    base = pd.read_csv(finished / "tables" / "baselines.csv")
    assert sorted(base.baseline) == ["bicubic", "blur", "noisy"]
    scores = pd.read_csv(finished / "tables" / "scores.csv")
    # the CSV rounds to 4 decimals: compare within that
    assert np.allclose(scores.over_baseline, scores.psnr - scores.baseline_psnr, atol=2e-4)
    summary = pd.read_csv(finished / "tables" / "score_summary.csv")
    assert "baseline: bicubic" in set(summary.condition)
    # equal compute and the data overlap, named
    design = pd.read_csv(finished / "tables" / "design.csv").set_index(["target", "condition"])
    assert design.loc[("x2", "scratch-long"), "steps"] == design.loc[("x2", "related"), "steps"]
    assert design.loc[("x2", "scratch-long"), "patches"] >= design.loc[("x2", "related"), "patches"]
    assert design.loc[("x2", "related"), "pretrain_includes_target_data"] == "sr/Set14/HR/original"
    assert "scratch-long" in set(pd.read_csv(finished / "tables" / "gains.csv").condition)
    pdfium = pytest.importorskip("pypdfium2")
    pdf = pdfium.PdfDocument(str(finished / "report.pdf"))
    assert len(pdf) >= 8
    first = pdf[0].get_textpage().get_text_range()
    assert "Wall time: training" in first  # the title page gives the hardware and the wall time
    assert "Hardware: CPU only" in first and "tiny" in first
    assert "INCLUDES the target's training set" in first and "bicubic" in first
    pages = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
    assert "Departures from the official EDT recipe" in " ".join(" ".join(pages[:2]).split())  # title page(s)
    claims_page = next(t for t in pages if "The paper's claims, judged" in t)  # after the title page(s)
    assert "NOT DECIDABLE AT THIS SCALE" in claims_page or "REPRODUCED" in claims_page
    assert any("Holm" in t and "Claims: effect" in t for t in pages)  # pdfium may give the table before the title
    assert any("Per model: PSNR" in t and "H/Hmax s0" in t for t in pages)
    assert "stage structure" in " ".join(claims.claim)
    models = pd.read_csv(finished / "tables" / "models.csv")
    assert len(models) == len(scores) and {"H/Hmax s0", "max(1-H/Hmax)"} <= set(models.columns)


def test_a_killed_study_resumes_to_the_same_tables(study_env, finished, tmp_path):
    # The SR half of the tiny study (its runs and contrasts are the tiny study's x2 ones: same names, configs,
    # seeds and crops), stopped after 3 trainings and resumed, gives the uninterrupted study's x2 numbers.
    text = preset_path("tiny").read_text().replace('targets = ["x2", "g25"]', 'targets = ["x2"]')
    study = tmp_path / "tiny_sr.toml"
    study.write_text(text.replace("${CKA_LAB_DATA:-../../../../shared/data}", "${CKA_LAB_DATA}"))
    out = tmp_path / "study"
    assert main(["study", str(study), "--out", str(out), "--max-runs", "3", "--device", "cpu"]) == 0
    assert len(list((out / "models").glob("*.pt"))) == 3 and not (out / "report.pdf").exists()
    # a run killed mid-training: a checkpoint in its folder, no exported model; it continues from there
    victim = next(r.name for r in plan_runs(load_study(study)) if not (out / "models" / f"{r.name}.pt").exists())
    assert main(["train", str(out / "configs" / f"{victim}.toml"), "--out", str(out / "runs" / victim),
                 "--max-iters", "1"]) == 0
    assert (out / "runs" / victim / "last.pt").exists()
    assert main(["study", str(study), "--out", str(out), "--resume", "--device", "cpu"]) == 0
    assert (out / "report.pdf").is_file()
    for name, key in (("scores", "target"), ("same_layer_cka", "target"), ("attention_locality", "target")):
        a = pd.read_csv(finished / "tables" / f"{name}.csv")
        a = a[a[key] == "x2"].reset_index(drop=True)
        b = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(b) == len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)
    # resumed once more, with every contrast saved: the report is rewritten, and its title page says so
    assert main(["study", str(study), "--out", str(out), "--resume", "--device", "cpu"]) == 0
    first = pytest.importorskip("pypdfium2").PdfDocument(str(out / "report.pdf"))[0].get_textpage().get_text_range()
    assert "measuring no contrast" in " ".join(first.split())


def test_folder_of_another_study_and_missing_resume_get_one_line(study_env, finished, tmp_path, capsys):
    assert main(["study", "tiny", "--out", str(finished)]) == 2
    assert "--resume" in capsys.readouterr().err
    other = tmp_path / "other.toml"
    other.write_text(preset_path("tiny").read_text().replace('name = "tiny"', 'name = "tiny2"'))
    assert main(["study", str(other), "--out", str(finished), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "made by another study file" in err and "\n" not in err
    assert main(["study", "nonesuch"]) == 2
    assert "bundled studies are" in capsys.readouterr().err
