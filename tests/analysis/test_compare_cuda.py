"""``compare_models`` on a GPU gives the CPU's CKA matrix (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_lab.analysis.compare import compare_models, probe_loader
from cka_lab.models import create_edt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_and_cpu_give_the_same_cka_matrix():
    torch.manual_seed(0)
    sr = create_edt("SRx2_EDTT").eval()
    torch.manual_seed(1)
    dn = create_edt("DNg25_EDTT").eval()
    batches, _ = probe_loader(None, patch=96, n_samples=16, seed=0, batch_size=8)
    batches = list(batches)
    cpu = compare_models(sr, dn, batches=batches, progress=False).matrix
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = compare_models(sr, dn, batches=batches, device="cuda", progress=False).matrix
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert gpu.shape == cpu.shape == (24, 24)
    # float32 features from different conv/matmul kernels: measured 2.4e-5 on an H100 (TF32 off)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
