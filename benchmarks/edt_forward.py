"""EDT forward time per input size: explicit vs fused attention, eager vs ``torch.compile`` (SR x2 head).

Prints one table per device (CPU, and CUDA when a GPU is present) measured in this run:
median milliseconds per forward with explicit attention maps (``explicit_attention()``), with the
default fused attention (eager), and for the compiled model; and the ratios explicit / fused (above 1:
fused is faster) and compiled / eager (below 1: compilation pays off). Padded sizes are multiples of 24.

    python benchmarks/edt_forward.py                 # T and B, sizes 48 96 192
    python benchmarks/edt_forward.py --sizes 48 96 --models SRx2_EDTT --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cka_lab.models import create_edt
from cka_lab.models.edt import explicit_attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds per call of ``fn(x)`` after ``warmup`` calls."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        _sync(x.device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            _sync(x.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["SRx2_EDTT", "SRx2_EDTB"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[48, 96, 192], help="LR input side (multiple of 24)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda if available")
    args = ap.parse_args()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"\n== {name} ==")
        print(f"{'model':<12} {'input':>9} {'explicit ms':>12} {'fused ms':>10} {'expl/fused':>11} "
              f"{'compiled ms':>12} {'compiled/eager':>15}")
        for arch in args.models:
            torch.manual_seed(0)
            model = create_edt(arch).to(device).eval()
            eager = lambda x, m=model: m.forward_task(x, "x2")  # noqa: E731
            compiled = None
            if not args.no_compile:
                compiled_model = torch.compile(model)
                compiled = lambda x, m=compiled_model: m.forward_task(x, "x2")  # noqa: E731
            for size in args.sizes:
                x = torch.rand(1, 3, size, size, device=device)
                reps = args.repeats if size <= 96 or device.type == "cuda" else max(2, args.repeats // 2)
                with explicit_attention():
                    t_x = time_forward(eager, x, reps, warmup=1)
                t_e = time_forward(eager, x, reps, warmup=1)
                head = f"{arch:<12} {size:>4}x{size:<4} {t_x * 1e3:>12.1f} {t_e * 1e3:>10.1f} {t_x / t_e:>10.2f}x"
                if compiled is not None:
                    t_c = time_forward(compiled, x, reps, warmup=2)  # first calls compile
                    print(f"{head} {t_c * 1e3:>12.1f} {t_c / t_e:>14.2f}x")
                else:
                    print(f"{head} {'-':>12} {'-':>15}")


if __name__ == "__main__":
    main()
