"""Training throughput (patches/s) of EDT-T and EDT-B, and the share of time spent loading data.

    python benchmarks/train_speed.py                       # CPU, and CUDA when a GPU is present
    python benchmarks/train_speed.py --devices cpu --archs SRx2_EDTT --threads 1 2 --workers 0 1

Each measurement builds the model and the data exactly as ``cka-lab train`` does (the real patch
sets and ``StepBatches`` loader), runs ``--warmup`` steps, then times ``--steps`` steps of
forward + L1 loss + backward + Adam. ``data`` is the time spent waiting for the next batch, as a
share of the step time. Patches/s counts every head's patches (batch x heads per step).

Training images: ``[--data-root]/train/Sun_Hays80`` (reduce 2) when present (``../shared/data``
by default), else the images bundled with the package (Set5 HR), so the script also runs on a
machine without the shared data.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see cka_lab/__init__.py)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cka_lab.data.probes import ASSETS_DIR  # noqa: E402
from cka_lab.train.batches import StepBatches, build_patch_sets, step_loader  # noqa: E402
from cka_lab.train.config import parse_config  # noqa: E402
from cka_lab.train.loop import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _sources(data_root: Path) -> str:
    sun = data_root / "train" / "Sun_Hays80"
    if sun.is_dir():
        return f'[{{path = "{sun}", reduce = 2}}]'
    return f'["{ASSETS_DIR / "sr_hr"}"]'


def measure(arch: str, device: str, batch: int, patch: int, steps: int, warmup: int, threads: int,
            workers: int, data_root: Path, amp: bool) -> dict:
    text = f"""
[run]
device = "{device}"
amp = {str(amp).lower()}
[model]
arch = "{arch}"
[data]
patch_size = {patch}
num_workers = {workers}
sr = {_sources(data_root)}
dn = {_sources(data_root)}
[schedule]
batch_size = {batch}
"""
    cfg = parse_config(text)
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build_model(cfg).to(dev).train()
    t0 = time.perf_counter()
    data = build_patch_sets(cfg, model.config)
    prep = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    amp_dtype = None
    if amp and dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    loader = step_loader(StepBatches(data.sets, batch, 0), 0, warmup + steps, workers, pin_memory=dev.type == "cuda")
    n_heads = len(model.tasks)
    data_time = step_time = 0.0
    it = iter(loader)
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_a = time.perf_counter()
        step = next(it)
        t_b = time.perf_counter()
        xs = [x.to(dev, non_blocking=True) for x, _ in step]
        ys = [y.to(dev, non_blocking=True) for _, y in step]
        with torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            outs = model(xs)
        loss = torch.stack([F.l1_loss(o.float(), y) for o, y in zip(outs, ys)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_c = time.perf_counter()
        if i >= warmup:
            data_time += t_b - t_a
            step_time += t_c - t_a
    patches = steps * batch * n_heads
    return {
        "arch": arch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "batch_per_head": batch,
        "heads": n_heads,
        "patch": patch,
        "workers": workers,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "sec_per_step": step_time / steps,
        "patches_per_s": patches / step_time,
        "data_share": data_time / step_time,
        "data_prep_s": prep,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["SRx2_EDTT", "SRx2_EDTB"])
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    p.add_argument("--batch", type=int, default=None, help="patches per head per step (default: 4 on CPU, 16 on CUDA)")
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, nargs="+", default=[0], help="CPU threads to try (0: torch default)")
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers to try")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--json", action="store_true", help="print one JSON line per measurement")
    args = p.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, CUDA: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
          f"data: {'Sun_Hays80' if (args.data_root / 'train' / 'Sun_Hays80').is_dir() else 'bundled Set5 HR'}")
    for device in devices:
        batch = args.batch or (16 if device == "cuda" else 4)
        steps = args.steps or (30 if device == "cuda" else 3)
        for arch in args.archs:
            for threads in (args.threads if device == "cpu" else [0]):
                for workers in args.workers:
                    r = measure(arch, device, batch, args.patch, steps, args.warmup, threads, workers,
                                args.data_root, not args.no_amp)
                    if args.json:
                        print(json.dumps(r))
                    else:
                        print(f"{r['arch']:<14} {r['device']:<28} batch {r['batch_per_head']}x{r['heads']} "
                              f"patch {r['patch']} workers {r['workers']} amp {r['amp']:<5} "
                              f"{r['sec_per_step']:7.3f} s/step  {r['patches_per_s']:8.2f} patches/s  "
                              f"data {100 * r['data_share']:4.1f}%  (data prep {r['data_prep_s']:.1f} s)")


if __name__ == "__main__":
    main()
