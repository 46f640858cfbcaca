"""cka_lab's compiled CPU kernels against torch's operators on EDT's shapes, in one run.

    python -u benchmarks/cpu_kernels_speed.py                 # EDT-T, one rank's share of a 48 px batch of 16
    python -u benchmarks/cpu_kernels_speed.py --batch 4 --threads 2

Two parts of an EDT block, forward + backward, each with the kernels on and off (``CKA_LAB_CPU_KERNEL``):

* a block's attention, from its normalised tokens to the input of ``proj`` (``qkv``, the two directions'
  window attention with LePE, the concatenation): with the kernels :func:`cka_lab.models.cpu_attention.
  attend_token_windows` on the token-major projection; without, torch's route (token gathers, SDPA,
  the LePE convolution module); plain and shifted-window blocks;
* the MLP, ``fc1`` to ``fc2``: with the kernels :func:`cka_lab.models.cpu_mlp.gelu_dwconv_gelu` between the
  two products; without, torch's modules (GELU, oneDNN's depthwise 5x5 convolution, GELU).

Each pair is timed alternating, ``--rounds`` times, the fastest counts; the ratio is torch's time over the
kernels'. Beside them, the largest difference of the outputs and of every gradient (relative to its largest
value): the kernels compute the same functions. Run it with the cores to yourself.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cka_lab.models import cpu_kernels  # noqa: E402
from cka_lab.models.edt import CSwinTransformerBlock, Mlp  # noqa: E402


@contextmanager
def kernels(on: bool):
    """The model's routes with cka_lab's CPU kernels on or off (torch's operators)."""
    before = os.environ.get("CKA_LAB_CPU_KERNEL")
    os.environ["CKA_LAB_CPU_KERNEL"] = "1" if on else "0"
    cpu_kernels.reset_kernel()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CKA_LAB_CPU_KERNEL")
        else:
            os.environ["CKA_LAB_CPU_KERNEL"] = before
        cpu_kernels.reset_kernel()


def _best(step, rounds: int) -> tuple[dict, dict]:
    """Fastest time of ``step()`` by torch's operators and by the kernels over alternating rounds, and the
    last result of each."""
    best, out = {"torch": float("inf"), "kernels": float("inf")}, {}
    for _ in range(rounds):
        for k in best:
            with kernels(k == "kernels"):
                cpu_kernels.kernel_library()  # load (or not) outside the timing
                t0 = time.perf_counter()
                out[k] = step()
                best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def _worst(a: list, b: list) -> float:
    return max((x - y).abs().max().item() / y.abs().max().item() for x, y in zip(a, b))


def _report(what: str, t: dict, out: dict) -> None:
    print(f"{what}: torch {1e3 * t['torch']:7.1f} ms, kernels {1e3 * t['kernels']:7.1f} ms forward + backward: "
          f"x{t['torch'] / t['kernels']:.2f} (largest difference {_worst(out['kernels'], out['torch']):.1e})", flush=True)


def attention(args) -> None:
    side, B = args.patch, args.batch
    g = torch.Generator().manual_seed(0)
    xn = torch.randn(B, side * side, 60, generator=g)
    grad = torch.randn(B, side * side, 60, generator=g)
    for shift in (False, True):
        torch.manual_seed(1)
        blk = CSwinTransformerBlock(60, 6, (6, 24), shift, 2.0, 0.0, side).train()

        def step(blk=blk):
            blk.zero_grad(set_to_none=True)
            x = xn.clone().requires_grad_()
            y = blk.attend(x, side, side)
            y.backward(grad)
            return [y.detach(), x.grad] + [p.grad for p in (blk.qkv.weight, blk.qkv.bias, *blk.attns.parameters())]

        t, out = _best(step, args.rounds)
        _report(f"block attention {'shifted' if shift else 'plain  '} B={B} {side}x{side} (EDT-T, 2 x 6 heads of 5, "
                f"windows 6x24 and 24x6)", t, out)


def mlp(args) -> None:
    side, B = args.patch, args.batch
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(B, side, side, 60, generator=g)
    grad = torch.randn(B, side, side, 60, generator=g)
    torch.manual_seed(3)
    m = Mlp(60, 120).train()

    def step():
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        y = m(x)
        y.backward(grad)
        return [y.detach(), x.grad] + [p.grad for p in m.parameters()]

    t, out = _best(step, args.rounds)
    _report(f"MLP fc1 -> GELU -> dwconv 5x5 -> GELU -> fc2 B={B} {side}x{side}x60 (hidden 120)", t, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="images (default: one rank's half of a batch of 16)")
    p.add_argument("--patch", type=int, default=48, help="body side in pixels (a multiple of 24)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_kernels.kernel_available():
        raise SystemExit("cka_lab's CPU kernels could not be built here (see the warning above)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    attention(args)
    mlp(args)


if __name__ == "__main__":
    main()
