"""Training throughput and peak memory of EDT-T on this machine, against the FLOP floor, in one run.

    python -u benchmarks/train_speed.py                          # CPU layouts: 1 run x 2 threads, DDP 2 x 1, 2 runs x 1
    python -u benchmarks/train_speed.py --patches 24 48 --batches 4 8 16 --layouts 1x2 ddp2x1 2x1
    python -u benchmarks/train_speed.py --precision fp32 bf16    # and bf16 autocast (CPUs with native bf16)
    python -u benchmarks/train_speed.py --paths                  # explicit vs SDPA vs the CPU kernel (issue 12's table)
    python -u benchmarks/train_speed.py --paths --device cuda    # the same on a GPU (fp32 and bf16)

One training step is what ``cka-lab train`` does per iteration: forward of one batch of EDT-T SR x2
patches (``--arch``), L1 loss, backward, Adam. Inputs are random: data loading is not what is measured
(``cka-lab train`` logs its own share as ``data_share``). Every measurement runs in fresh processes, so
that peak memory is its own (``ru_maxrss``: the whole process, model and Python included).

Layouts (``--layouts``), each for every patch size x batch size:

* ``1x2``: one run, one process with 2 threads, ``batch`` patches per step;
* ``ddp2x1``: one run as DDP over gloo, 2 ranks of 1 thread, ``batch / 2`` patches per rank per step
  (the same global batch);
* ``2x1``: two independent runs side by side, 1 thread each, ``batch`` patches per step each; the
  patches/s given is the two runs together (what a study that packs 2 runs on 2 cores gets).

Each layout is measured with cka_lab's compiled CPU kernels on and off (``--kernels``; on is what
``cka-lab train`` uses: :mod:`cka_lab.models.cpu_attention` for window attention,
:mod:`cka_lab.models.cpu_mlp` for the MLP's GELU - depthwise convolution - GELU; off, ``CKA_LAB_CPU_KERNEL=0``,
is torch's SDPA and oneDNN, the baseline), in the same run.

``--baseline-repo DIR`` adds, for the ``1x2`` layout, the same step with the model code of another
checkout (``git worktree add DIR <commit>``; its ``cka_lab`` is imported instead of this one's), so a
speed-up over an earlier version is measured in the same run.

Each layout reports the fastest of ``--steps`` timed steps after ``--warmup`` untimed ones. Beside the
numbers: the float32 GEMM rate of the machine (a 2048^3 matmul, best of 3, all threads) and the FLOP
floor: ``GEMM rate / (3 x forward FLOPs per patch)`` patches/s (forward FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode``; a training step is about 3 forwards). Run it with the
cores to yourself: the ratios are only meaningful from one idle run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see cka_lab/__init__.py)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's cka_lab, also in the child processes

SCALES = {"SRx2_EDTT": 2, "DNg25_EDTT": 1}
LAYOUTS = ("1x2", "ddp2x1", "2x1")


@dataclass(frozen=True)
class Spec:
    """One process of one measurement."""

    arch: str = "SRx2_EDTT"
    patch: int = 48  # body patch (LR patch for SR; the DN input is patch * 4)
    batch: int = 16  # patches per step of this process
    threads: int = 2
    path: str = "fused"  # "explicit" | "fused"
    kernels: str = "on"  # CPU: "on" (cka_lab's compiled kernels, the default) | "off" (torch's SDPA and conv backward)
    repo: str = ""  # another checkout whose model code is measured (--baseline-repo); "" = this one
    precision: str = "fp32"  # "fp32" | "bf16"
    device: str = "cpu"
    steps: int = 3
    warmup: int = 1
    rank: int = 0
    world: int = 1
    port: int = 0


def gemm_gflops(n: int = 2048, device: str = "cpu") -> float:
    """float32 ``n x n @ n x n`` rate in GFLOP/s (best of 3 after one warm-up)."""
    dev = torch.device(device)
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
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


def _input_side(arch: str, patch: int) -> int:
    return patch if arch.startswith("SR") else patch * 4


def forward_flops(arch: str, patch: int) -> float:
    """FLOPs of one forward of one patch (``FlopCounterMode``; its global module hooks make the model take
    the explicit attention path, so attention is counted as its two batched matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cka_lab.models import create_edt

    model = create_edt(arch, image_size=patch).eval()
    side = _input_side(arch, patch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([torch.rand(1, 3, side, side)])
    return float(counter.get_total_flops())


def measure(spec: Spec) -> dict:
    """Run ``spec`` in this process: fastest and median seconds per step, patches/s, peak memory."""
    os.environ["CKA_LAB_CPU_KERNEL"] = "1" if spec.kernels == "on" else "0"
    if spec.repo:  # the baseline checkout's cka_lab, imported instead of this one's
        sys.path.insert(0, spec.repo)
    from cka_lab.models import create_edt

    if spec.kernels == "on" and spec.device == "cpu" and not spec.repo:
        from cka_lab.models import cpu_kernels

        if not cpu_kernels.kernel_available():
            raise SystemExit("--kernels on: cka_lab's CPU kernels could not be built here")
    torch.set_num_threads(spec.threads)
    dev = torch.device(spec.device)
    if spec.world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec.port}", rank=spec.rank,
                                world_size=spec.world)
    side, scale = _input_side(spec.arch, spec.patch), SCALES[spec.arch]
    torch.manual_seed(0)
    model = create_edt(spec.arch, image_size=spec.patch).to(dev).train()
    for m in model.modules():  # every version with both paths has WindowAttention.fused_attn
        if hasattr(m, "fused_attn"):
            m.fused_attn = spec.path == "fused"
    net = model
    if spec.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1 + spec.rank)
    x = torch.rand(spec.batch, 3, side, side, generator=g).to(dev)
    y = torch.rand(spec.batch, 3, side * scale, side * scale, generator=g).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(spec.warmup + spec.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if spec.precision == "bf16":
            from cka_lab.models.edt import bf16_autocast

            ctx = bf16_autocast(dev)
        else:
            ctx = torch.autocast(dev.type, enabled=False)
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
        peak, mem_kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        peak, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"  # Linux: KiB
    if spec.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    times.sort()
    import cka_lab

    return {**asdict(spec), "cka_lab": str(Path(cka_lab.__file__).parent), "sec_per_step": times[0], "median_sec_per_step": times[len(times) // 2],
            "patches_per_s": spec.batch / times[0], "peak_bytes": peak, "memory": mem_kind}


def _start(spec: Spec) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(spec))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _finish(proc: subprocess.Popen, spec: Spec) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_children(specs: list[Spec]) -> list[dict]:
    """Start every spec in its own process at once and collect their results."""
    procs = [_start(s) for s in specs]
    return [_finish(p, s) for p, s in zip(procs, specs)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_layout(layout: str, base: Spec) -> dict:
    """One layout (see the module docstring): global patches/s of the run(s), summed peak memory."""
    if layout == "1x2":
        (r,) = run_children([replace(base, threads=2)])
        pps, sec = r["patches_per_s"], r["sec_per_step"]
        mem = r["peak_bytes"]
        if base.repo:
            print(f"  (baseline: the model of {r['cka_lab']})")
    elif layout == "ddp2x1":
        if base.batch % 2:
            raise SystemExit(f"ddp2x1 needs an even batch, got {base.batch}")
        port = _free_port()
        rs = run_children([replace(base, threads=1, batch=base.batch // 2, rank=k, world=2, port=port) for k in (0, 1)])
        sec = max(r["sec_per_step"] for r in rs)
        pps, mem = base.batch / sec, sum(r["peak_bytes"] for r in rs)
    elif layout == "2x1":
        rs = run_children([replace(base, threads=1), replace(base, threads=1)])
        pps, mem = sum(r["patches_per_s"] for r in rs), sum(r["peak_bytes"] for r in rs)
        sec = max(r["sec_per_step"] for r in rs)
    else:
        raise SystemExit(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
    return {"layout": layout, "patch": base.patch, "batch": base.batch, "sec_per_step": sec,
            "patches_per_s": pps, "peak_bytes": mem}


def _fmt_mem(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def layouts_table(args) -> None:
    import pandas as pd

    gemm = gemm_gflops(2048, "cpu")
    print(f"float32 GEMM 2048^3: {gemm:.0f} GFLOP/s with {torch.get_num_threads()} threads")
    rows = []
    for patch in args.patches:
        fwd = forward_flops(args.arch, patch)
        floor = gemm * 1e9 / (3 * fwd)
        print(f"{args.arch} at {patch} px: {fwd / 1e9:.2f} GFLOP forward per patch; floor {floor:.2f} patches/s")
        for batch in args.batches:
            for layout in args.layouts:
                runs = [(p, k) for k in args.kernels for p in args.precision or ["fp32"]]
                if args.baseline_repo and layout == "1x2":
                    runs.append(("fp32", "baseline"))
                for prec, kernels in runs:
                    base = Spec(arch=args.arch, patch=patch, batch=batch, steps=args.steps, warmup=args.warmup,
                                precision=prec, kernels="off" if kernels == "baseline" else kernels,
                                repo=str(Path(args.baseline_repo).resolve()) if kernels == "baseline" else "")
                    r = measure_layout(layout, base)
                    r["precision"], r["kernels"] = prec, kernels
                    r["floor_patches_per_s"] = floor
                    r["of_floor"] = r["patches_per_s"] / floor
                    rows.append(r)
                    print(f"  {layout:<7} kernels {kernels:<8} {prec} patch {patch:>3} batch {batch:>3}: {r['sec_per_step']:7.3f} s/step "
                          f"{r['patches_per_s']:6.2f} patches/s ({100 * r['of_floor']:4.1f} % of floor), "
                          f"peak {_fmt_mem(r['peak_bytes'])}", flush=True)
    df = pd.DataFrame(rows)
    df["peak"] = df["peak_bytes"].map(_fmt_mem)
    print()
    print(df[["layout", "kernels", "precision", "patch", "batch", "sec_per_step", "patches_per_s", "of_floor", "peak"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for patch, g in df.groupby("patch"):
        best = g.loc[g["patches_per_s"].idxmax()]
        ratios = []
        for what, sel in (("1x2 fp32 without the kernels", (g["layout"] == "1x2") & (g["kernels"] == "off")),
                          (f"{best['layout']} fp32 without the kernels", (g["layout"] == best["layout"]) & (g["kernels"] == "off"))):
            ref = g[sel & (g["batch"] == best["batch"]) & (g["precision"] == "fp32")]
            if len(ref) and not ref.index.equals(g.loc[[best.name]].index):
                ratios.append(f"x{best['patches_per_s'] / ref['patches_per_s'].iloc[0]:.2f} {what}")
        ref = g[(g["kernels"] == "baseline") & (g["batch"] == best["batch"])]
        if len(ref):
            ratios.append(f"x{best['patches_per_s'] / ref['patches_per_s'].iloc[0]:.2f} the baseline checkout's 1x2")
        ratio = f" ({', '.join(dict.fromkeys(ratios))} at that batch)" if ratios else ""
        print(f"fastest at {patch} px: {best['layout']} kernels {best['kernels']} {best['precision']} batch {best['batch']}: "
              f"{best['patches_per_s']:.2f} patches/s, {100 * best['of_floor']:.1f} % of the floor{ratio}")


def paths_table(args) -> None:
    """Explicit vs fused attention (and bf16), one process each, alternating (issue 12's table)."""
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    precisions = args.precision or (["fp32", "bf16"] if dev == "cuda" else ["fp32"])
    print(f"float32 GEMM 2048^3: {gemm_gflops(2048, dev):.0f} GFLOP/s on {dev}")
    for patch in args.patches:
        for batch in args.batches:
            best: dict[tuple, dict] = {}
            for _ in range(args.rounds):
                fused = ["fused sdpa", "fused kernel"] if dev == "cpu" else ["fused sdpa"]  # kernel: cka_lab's
                for prec in precisions:
                    for path in ["explicit", *fused]:
                        spec = Spec(arch=args.arch, patch=patch, batch=batch, threads=args.threads or 2,
                                    path=path.split()[0], kernels="on" if path.endswith("kernel") else "off",
                                    precision=prec, device=dev, steps=args.steps, warmup=args.warmup)
                        (r,) = run_children([spec])
                        if (prec, path) not in best or r["sec_per_step"] < best[(prec, path)]["sec_per_step"]:
                            best[(prec, path)] = r
            base = best[(precisions[0], "explicit")]
            for (prec, path), r in best.items():
                print(f"{args.arch} patch {patch} batch {batch} {prec} {path:<12}: {r['sec_per_step']:7.3f} s/step "
                      f"{r['patches_per_s']:6.2f} patches/s, {r['memory']} {_fmt_mem(r['peak_bytes'])}; vs explicit: "
                      f"speed x{base['sec_per_step'] / r['sec_per_step']:.2f}, memory 1/{base['peak_bytes'] / r['peak_bytes']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="SRx2_EDTT", choices=list(SCALES))
    p.add_argument("--patches", type=int, nargs="+", default=[48], help="body patch sizes (SR: the LR patch)")
    p.add_argument("--batches", type=int, nargs="+", default=[16], help="patches per step of one run")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--kernels", nargs="+", default=["on", "off"], choices=["on", "off"],
                   help="cka_lab's compiled CPU kernels (attention, depthwise-conv backward; the default) on and/or off")
    p.add_argument("--baseline-repo", default="",
                   help="another checkout (e.g. a git worktree of an earlier commit) whose model is measured in the "
                        "1x2 layout beside the others, as kernels = baseline")
    p.add_argument("--paths", action="store_true", help="explicit vs fused attention instead of the layouts")
    p.add_argument("--device", default="cpu", help="with --paths: cpu or cuda")
    p.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16"],
                   help="fp32 and/or bf16 autocast (default fp32; with --paths on cuda: both)")
    p.add_argument("--threads", type=int, default=0, help="with --paths: CPU threads (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="with --paths: alternations, the fastest counts")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(Spec(**json.loads(args.child)))))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}; {os.cpu_count()} cores, load average {load:.1f}; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if args.paths:
        paths_table(args)
    else:
        layouts_table(args)


if __name__ == "__main__":
    main()
