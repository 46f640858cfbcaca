"""Trivial baselines: hand-computable cases, the oracle sigma, the protocol of the model's score, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cka_lab.cli import main
from cka_lab.data.datasets import eval_pairs
from cka_lab.data.degrade import imresize
from cka_lab.data.images import uint8_to_tensor
from cka_lab.metrics.baselines import BLUR_SIGMAS, baseline_names, baseline_scores, gaussian_blur
from cka_lab.metrics.quality import gaussian_kernel_1d, psnr


@dataclass
class Pair:
    name: str
    input: torch.Tensor
    target: np.ndarray


def test_names_per_task():
    assert baseline_names("x3") == ("bicubic",)
    assert baseline_names("g50") == ("noisy", "blur")
    assert baseline_names("H") == ("rainy",)


def test_blur_keeps_a_constant_and_spreads_an_impulse_as_the_sampled_kernel():
    const = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(const, 1.5), const, atol=1e-7)
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[0, 0, 10, 10] = 1.0
    y = gaussian_blur(x, 1.0)  # radius 3: the 7x7 outer product
    k = gaussian_kernel_1d(7, 1.0)
    assert torch.allclose(y[0, 0, 7:14, 7:14], torch.as_tensor(np.outer(k, k)), atol=1e-15)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-12)


def test_rainy_input_scored_on_y_by_hand():
    """A uniform offset of 10 on every RGB channel is 10 * 219/255 on Y: PSNR = 20 log10(255 / 8.588...)."""
    target = np.full((16, 16, 3), 100, np.uint8)
    pair = Pair("a", uint8_to_tensor(np.full((16, 16, 3), 110, np.uint8)), target)
    (b,) = baseline_scores([pair], "L")
    assert b.name == "rainy" and b.images == 1
    assert b.psnr == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-9)


def test_noisy_and_best_blur_choose_the_sigma_of_the_best_mean_psnr():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    clean = (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0))[:, :, None].repeat(3, 2).astype(np.uint8)
    pairs = [Pair(str(i), torch.as_tensor((clean.transpose(2, 0, 1)[None] + rng.normal(0, 25, (1, 3, 48, 48))) / 255,
                                          dtype=torch.float32), clean) for i in range(2)]
    noisy, blur = baseline_scores(pairs, "g25")
    assert noisy.psnr == pytest.approx(np.mean([psnr(p.input, p.target) for p in pairs]), abs=1e-12)
    by_sigma = {s: np.mean([psnr(gaussian_blur(p.input, s), p.target) for p in pairs]) for s in BLUR_SIGMAS}
    best = max(by_sigma, key=by_sigma.get)
    assert blur.psnr == pytest.approx(by_sigma[best], abs=1e-12)
    assert f"sigma {best:g} px" in blur.detail
    assert blur.psnr > noisy.psnr + 3


def test_real_test_sets(data_dir):
    """Set5 x2 bicubic of the official LR files: 33.68 dB whole, 34.16 dB on 128 px crops; McMaster g25
    on 128 px crops: noisy 21.07 dB, best blur (sigma 1, a 7x7 kernel) 27.49 dB."""
    pairs = eval_pairs(data_dir / "sr/Set5", "x2")
    (bic,) = baseline_scores(pairs, "x2")
    assert bic.psnr == pytest.approx(33.682, abs=1e-3)
    # the same as scoring imresize of the LR by hand, Y channel, border 2
    by_hand = np.mean([psnr(imresize(np.rint(p.input[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), 2.0),
                            p.target, crop_border=2, y_channel=True) for p in pairs])
    assert bic.psnr == pytest.approx(by_hand, abs=1e-12)
    (crop,) = baseline_scores(eval_pairs(data_dir / "sr/Set5", "x2", crop=128), "x2")
    assert crop.psnr == pytest.approx(34.164, abs=1e-3)
    noisy, blur = baseline_scores(eval_pairs(data_dir / "denoise/McMaster", "g25", crop=128), "g25")
    assert noisy.psnr == pytest.approx(21.066, abs=1e-3)
    assert blur.psnr == pytest.approx(27.492, abs=1e-3) and "sigma 1 px" in blur.detail


def test_evaluate_prints_the_baselines_beside_the_model(capsys, repo_root, data_dir):
    ckpt = str(repo_root / "checkpoints/edtt_srx2_scratch.pt")
    args = ["evaluate", ckpt, "--dataset", str(data_dir / "sr/Set5"), "--task", "x2", "--max-images", "2", "--crop", "64"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (b,) = out["baselines"]
    pairs = eval_pairs(data_dir / "sr/Set5", "x2", max_images=2, crop=64)
    assert b["name"] == "bicubic" and b["psnr"] == pytest.approx(baseline_scores(pairs, "x2")[0].psnr, abs=1e-12)
    assert [i["name"] for i in b["per_image"]] == [i["name"] for i in out["images"]]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "bicubic PSNR/SSIM" in text and f"{b['psnr']:.3f}" in text
    assert main(args + ["--json", "--no-baselines"]) == 0
    assert json.loads(capsys.readouterr().out)["baselines"] == []
