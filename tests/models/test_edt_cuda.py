"""On a GPU, EDT is still the official model (float32, TF32 off) and trains with autocast.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest tests/models/test_edt_cuda.py tests/analysis/test_compare_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cka_lab.models import create_edt

from .conftest import CASES, case_json, case_model, load_array, requires_fixtures, task_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ATOL = 1e-5


@pytest.fixture()
def exact_fp32():
    """cuDNN/cuBLAS in true float32: TF32 would round operands to 10 mantissa bits."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@requires_fixtures
@pytest.mark.parametrize("case", CASES)
def test_every_head_on_cuda_equals_the_official_cpu_output(case, exact_fp32):
    model = case_model(case).cuda()
    for head in case_json(case)["heads"]:
        tag = head["tag"]
        x = load_array(case, f"inputs_padded/{tag}.npy").cuda()
        with torch.no_grad():
            y = model.forward_task(x, task_of(tag)).cpu()
        ref = load_array(case, f"outputs_padded/{tag}.npy")
        assert (y - ref).abs().max().item() <= ATOL, f"{case}/{tag}"


def test_restore_of_an_odd_sized_image_on_cuda_equals_cpu(exact_fp32):
    torch.manual_seed(0)
    model = create_edt("SRx2x3DNg15_EDTT").eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        cpu = {t: model.restore(x, t) for t in model.tasks}
        model.cuda()
        gpu = {t: model.restore(x.cuda(), t).cpu() for t in model.tasks}
    for t in model.tasks:
        assert gpu[t].shape == cpu[t].shape
        assert (gpu[t] - cpu[t]).abs().max().item() <= ATOL, t


def test_a_bf16_autocast_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = create_edt("SRx2x3x4_EDTT").cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    xs = [torch.rand(4, 3, 48, 48, device="cuda") for _ in model.tasks]
    ys = [F.interpolate(x, scale_factor=int(t[1:]), mode="bicubic") for x, t in zip(xs, model.tasks)]
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs = model(xs)
        loss = torch.stack([F.l1_loss(o.float(), y) for o, y in zip(outs, ys)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]  # on the CPU without autocast: 0.087 -> 0.057 in 15 steps


@pytest.mark.parametrize("shift", [False, True])
def test_fused_attention_on_cuda_pads_the_head_dim_and_equals_the_explicit_path(exact_fp32, shift):
    """head_dim 5 is zero-padded to 8 for the efficient SDPA kernels: outputs and gradients unchanged."""
    from cka_lab.models.edt import CSwinTransformerBlock, explicit_attention

    torch.manual_seed(0)
    blk = CSwinTransformerBlock(60, 6, (6, 24), shift, 2.0, 0.0, 48).cuda().train()
    x = torch.randn(4, 48 * 48, 60, device="cuda")

    def run():
        blk.zero_grad(set_to_none=True)
        out = blk(x, (48, 48))
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in blk.parameters()]

    out_f, g_f = run()
    with explicit_attention():
        out_e, g_e = run()
    assert (out_f - out_e).abs().max().item() <= ATOL * max(1.0, out_e.abs().max().item())
    for a, b in zip(g_f, g_e):
        assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()
