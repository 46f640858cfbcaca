"""The float32 Gram error measured on EDT features (issue: "the float32 Gram error documented as measured on
EDT features"): CKA of a bundled EDT-T's block updates and outputs from float32 features against the same
features in float64, through the production estimators. The module docstring of
:mod:`cka_lab.metrics.cka_functional` quotes the numbers this test prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cka_lab.data.probes import bundled_images, probe_batches
from cka_lab.features import FeatureExtractor
from cka_lab.metrics.cka import MinibatchCKA
from cka_lab.metrics.cka_full import FullBatchCKA
from cka_lab.models import load_model

CKPT = Path(__file__).resolve().parents[2] / "checkpoints" / "edtt_srx2_scratch.pt"


def _features(n: int = 32):
    """Block updates and outputs of a bundled EDT-T SR x2 on ``n`` bundled probe crops (48 px), float32."""
    model = load_model(CKPT).eval()
    layers = [f"body.layers.{s}.residual_group.blocks.{b}" for s in range(4) for b in (0, 2, 5)]
    out = {"update": [], "output": []}
    with FeatureExtractor(model, layers, kind="update") as upd, FeatureExtractor(model, layers) as outp, \
            torch.no_grad():
        for x in probe_batches(bundled_images("sr_lr_x2"), patch=48, n_samples=n, batch_size=16):
            model.forward_task(x, "x2")
            out["update"].append(dict(upd.features))
            out["output"].append(dict(outp.features))
    return upd.layers, out


def test_float32_gram_error_on_edt_features_is_below_1e_5(capsys):
    layers, features = _features()
    for kind, batches in features.items():
        errs = {}
        for name, make32, make64 in (
                ("unbiased-minibatch", lambda: MinibatchCKA(layers, layers, unit_size=8),
                 lambda: MinibatchCKA(layers, layers, unit_size=8)),
                ("biased-full, float32 Gram", lambda: FullBatchCKA(layers, layers, gram_dtype=torch.float32),
                 lambda: FullBatchCKA(layers, layers, gram_dtype=torch.float64))):
            m32, m64 = make32(), make64()
            for f in batches:
                m32.update(f, f)
                m64.update({k: v.double() for k, v in f.items()}, {k: v.double() for k, v in f.items()})
            a = np.asarray(m32.result().matrix, dtype=np.float64)
            b = np.asarray(m64.result().matrix, dtype=np.float64)
            assert a.shape == (len(layers), len(layers))
            errs[name] = float(np.nanmax(np.abs(a - b)))
            assert errs[name] < 1e-5, (kind, name, errs[name])
        with capsys.disabled():
            print(f"\nfloat32 vs float64 features, EDT-T SR x2 block {kind}s, N = 32: "
                  + ", ".join(f"{k} max |dCKA| {v:.1e}" for k, v in errs.items()))
