"""cka_lab's compiled CPU kernels against torch's operators on EDT's shapes, in one run.

    python -u benchmarks/cpu_kernels_speed.py                 # EDT-T, one rank's share of a 48 px batch of 16
    python -u benchmarks/cpu_kernels_speed.py --batch 4 --threads 2 --head-dim 15

* window attention, forward + backward: :func:`cka_lab.models.cpu_attention.window_attention` against
  ``F.scaled_dot_product_attention`` (torch's CPU flash kernel) on the same ``(B*nW, N, 3, h, d)`` qkv
  (EDT: ``N = 6 x 24 = 144`` tokens per window), with the shifted-window mask and without;
* the depthwise 5x5 convolution's backward (EDT's MLP): :func:`cka_lab.models.cpu_dwconv.depthwise_conv`
  against ``nn.Conv2d(groups=C)`` (oneDNN) on a channels-last ``(B, H, W, 2C)`` map.

Each pair is timed alternating, ``--rounds`` times, the fastest counts; the ratio is torch's time over the
kernel's. Beside them, the largest difference of the outputs and gradients (relative to their largest
value): the kernels compute the same functions. Run it with the cores to yourself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cka_lab.models import cpu_kernels  # noqa: E402
from cka_lab.models.cpu_attention import window_attention  # noqa: E402
from cka_lab.models.cpu_dwconv import depthwise_conv  # noqa: E402
from cka_lab.models.edt import window_mask  # noqa: E402


def _best(fns: dict, rounds: int) -> dict:
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


def attention(args) -> None:
    side, (wh, ww), h, d = args.patch, (6, 24), 6, args.head_dim
    N, nW = wh * ww, (side // wh) * (side // ww)
    W = args.batch * nW
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(W, N, 3, h, d, generator=g)
    grad = torch.randn(W, N, h, d, generator=g)
    official = window_mask(side, side, (wh, ww), (wh // 2, ww // 2))  # -100 across regions
    shifted = torch.zeros_like(official).masked_fill_(official < 0, float("-inf")).repeat(args.batch, 1, 1)
    for name, mask in (("plain", None), ("shifted", shifted)):
        sdpa_mask = None if mask is None else mask.unsqueeze(1)
        out = {}

        def kernel(mask=mask, out=out):
            x = qkv.clone().requires_grad_()
            o = window_attention(x, mask, d**-0.5)
            o.backward(grad)
            out["kernel"] = (o.detach(), x.grad)

        def sdpa(sdpa_mask=sdpa_mask, out=out):
            x = qkv.clone().requires_grad_()
            q, k, v = (u.transpose(1, 2) for u in x.unbind(2))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=d**-0.5).transpose(1, 2)
            o.backward(grad)
            out["sdpa"] = (o.detach(), x.grad)

        t = _best({"sdpa": sdpa, "kernel": kernel}, args.rounds)
        err = max(_rel(out["kernel"][i], out["sdpa"][i]) for i in (0, 1))
        print(f"attention {name:<7} W={W} N={N} h={h} d={d}: SDPA {1e3 * t['sdpa']:7.1f} ms, kernel "
              f"{1e3 * t['kernel']:7.1f} ms forward + backward: x{t['sdpa'] / t['kernel']:.2f} "
              f"(largest difference {err:.1e})", flush=True)


def dwconv(args) -> None:
    B, H, C, k = args.batch, args.patch, args.hidden, 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, H, C, generator=g)
    grad = torch.randn(B, H, H, C, generator=g)
    conv = torch.nn.Conv2d(C, C, k, 1, k // 2, groups=C)
    out = {}

    def torch_conv():  # the module on the channels-last view, as EDT's MLP calls it
        xs = x.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        o = conv(xs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        o.backward(grad)
        out["torch"] = (xs.grad, conv.weight.grad.clone(), conv.bias.grad.clone())

    def kernel():
        xs = x.clone().requires_grad_()
        w, b = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
        depthwise_conv(xs, w, b).backward(grad)
        out["kernel"] = (xs.grad, w.grad, b.grad)

    t = _best({"torch": torch_conv, "kernel": kernel}, args.rounds)
    err = max(_rel(out["kernel"][i], out["torch"][i]) for i in range(3))
    print(f"depthwise {k}x{k} conv B={B} {H}x{H} C={C}: oneDNN {1e3 * t['torch']:7.1f} ms, kernel "
          f"{1e3 * t['kernel']:7.1f} ms forward + backward: x{t['torch'] / t['kernel']:.2f} "
          f"(largest difference {err:.1e})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="images (default: one rank's half of a batch of 16)")
    p.add_argument("--patch", type=int, default=48, help="body side in pixels")
    p.add_argument("--head-dim", type=int, default=5, help="EDT-T 5, EDT-S 10, EDT-B/L 15")
    p.add_argument("--hidden", type=int, default=120, help="MLP channels (EDT-T: 2 x 60)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_kernels.kernel_available():
        raise SystemExit("cka_lab's CPU kernels could not be built here (see the warning above)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    attention(args)
    dwconv(args)


if __name__ == "__main__":
    main()
