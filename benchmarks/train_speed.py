"""Training throughput and peak memory of EDT-T, explicit vs fused attention, as ratios measured in one run.

    python benchmarks/train_speed.py                              # CPU: SR x2 and DN sigma25, fp32
    python benchmarks/train_speed.py --device cuda                # the same on the GPU (fp32 and bf16)
    python benchmarks/train_speed.py --batch 4 --steps 2 --precision fp32 bf16 --compile

One training step is what ``cka-lab train`` does per iteration: forward of one batch per head, L1 loss,
backward, Adam. The shapes are those of the bundled configs (``checkpoints/configs``): SR x2 48 px LR
patches (``edtt_srx2_scratch``), DN sigma25 192 px noisy patches (48 px at the body, ``edtt_dng25_scratch``),
16 patches per step unless ``--batch``. Inputs are random: data loading is not what is compared.

Every (model, path, precision) runs in its own fresh process, so that its peak memory is its own: peak
RSS on the CPU (``ru_maxrss``, the whole process, model and Python included), ``max_memory_allocated``
on CUDA. The processes alternate (explicit, fused, explicit, fused, ... for ``--rounds``) and each
reports its fastest step, so that a load that comes and goes hits both paths alike. The ratios printed
are fused / explicit (speed) and explicit / fused (memory), from this run only.

The float32 GEMM rate of the machine (a 2048^3 matmul, best of 3) is printed first, to put the numbers
in context. Targets of issue 12: CPU training >= 3x the explicit path; GPU peak memory <= 1/3 of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see cka_lab/__init__.py)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's cka_lab, also in the child processes

# arch, LR/noisy input side, output scale: the bundled from-scratch configs
MODELS = {
    "SRx2_EDTT": (48, 2),  # edtt_srx2_scratch: 48 px LR patches -> 96 px
    "DNg25_EDTT": (192, 1),  # edtt_dng25_scratch: 192 px noisy patches (48 px at the body)
}


@dataclass(frozen=True)
class Spec:
    """One measurement: a model, an attention path, a precision, on one device."""

    arch: str
    path: str  # "explicit" | "fused"
    precision: str  # "fp32" | "bf16"
    device: str
    batch: int
    steps: int
    warmup: int
    threads: int
    compile: bool = False


def gemm_gflops(n: int = 2048, device: str = "cpu") -> float:
    """float32 ``n x n @ n x n`` rate in GFLOP/s (best of 3 after one warm-up)."""
    dev = torch.device(device)
    a = torch.rand(n, n, device=dev)
    b = torch.rand(n, n, device=dev)
    best = float("inf")
    for i in range(4):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure(spec: Spec) -> dict:
    """Run ``spec`` in this process: fastest and median seconds per step, patches/s, peak memory."""
    from cka_lab.models import create_edt
    from cka_lab.models.edt import bf16_autocast, compile_for_training

    if spec.threads:
        torch.set_num_threads(spec.threads)
    dev = torch.device(spec.device)
    side, scale = MODELS[spec.arch]
    torch.manual_seed(0)
    model = create_edt(spec.arch, image_size=48).to(dev).train()
    model.set_fused_attn(spec.path == "fused")
    net = compile_for_training(model) if spec.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(spec.batch, 3, side, side, generator=g).to(dev)
    y = torch.rand(spec.batch, 3, side * scale, side * scale, generator=g).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(spec.warmup + spec.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ctx = bf16_autocast(dev) if spec.precision == "bf16" else torch.autocast(dev.type, enabled=False)
        with ctx:
            out = net([x])[0]
        loss = F.l1_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= spec.warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        mem_kind = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        mem_kind = "peak RSS"
    times.sort()
    return {
        **asdict(spec),
        "sec_per_step": times[0],
        "median_sec_per_step": times[len(times) // 2],
        "patches_per_s": spec.batch / times[0],
        "peak_bytes": peak,
        "memory": mem_kind,
        "loss": float(loss),
    }


def run_child(spec: Spec) -> dict:
    """``measure(spec)`` in a fresh Python process (its own peak memory), returning its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_mem(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--archs", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=16, help="patches per step (bundled configs: 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: 2 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="alternations explicit/fused; the fastest step of all counts")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16"],
                   help="default: fp32 on CPU, fp32 and bf16 on CUDA")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd fused training")
    p.add_argument("--json", action="store_true", help="also print one JSON line per measurement")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(Spec(**json.loads(args.child)))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (20 if args.device == "cuda" else 2)
    precisions = args.precision or (["fp32", "bf16"] if args.device == "cuda" else ["fp32"])
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}; {name}; {os.cpu_count()} cores, load average {load:.1f}; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"float32 GEMM 2048^3: {gemm_gflops(2048, args.device):.0f} GFLOP/s on {args.device}")
    print(f"batch {args.batch} patches/step, {steps} timed steps after {args.warmup} warm-up per process, "
          f"{args.rounds} round(s)\n")
    variants = [(prec, path, False) for prec in precisions for path in ("explicit", "fused")]
    if args.compile:
        variants += [(prec, "fused", True) for prec in precisions]
    header = f"{'model':<11} {'precision':<9} {'attention':<16} {'s/step':>8} {'patches/s':>10} {'peak memory':>12}"
    for arch in args.archs:
        print(header)
        best: dict[tuple, dict] = {}
        for _ in range(args.rounds):
            for prec, path, comp in variants:
                spec = Spec(arch, path, prec, args.device, args.batch, steps, args.warmup, args.threads, comp)
                r = run_child(spec)
                key = (prec, path, comp)
                if key not in best or r["sec_per_step"] < best[key]["sec_per_step"]:
                    best[key] = r
        for (prec, path, comp), r in best.items():
            label = path + (" + compile" if comp else "")
            print(f"{arch:<11} {prec:<9} {label:<16} {r['sec_per_step']:8.3f} {r['patches_per_s']:10.2f} "
                  f"{_fmt_mem(r['peak_bytes']):>12}")
            if args.json:
                print(json.dumps(r))
        base = best[(precisions[0], "explicit", False)]
        for (prec, path, comp), r in best.items():
            if (prec, path, comp) == (precisions[0], "explicit", False):
                continue
            label = f"{prec} {path}" + (" + compile" if comp else "")
            print(f"  {label:<24} vs {precisions[0]} explicit: speed x{base['sec_per_step'] / r['sec_per_step']:.2f}, "
                  f"peak memory 1/{base['peak_bytes'] / r['peak_bytes']:.2f} ({r['memory']})")
        print()


if __name__ == "__main__":
    main()
