"""What the analysis costs on top of running the models: attention distance + CKA report time for two
EDT-T models on the bundled probe set, as a ratio to their bare forward passes, measured in one run.

    python benchmarks/report_speed.py [--n-samples 128] [--batch-size 32] [--repeats 2] [--device cpu]

Models: the bundled ``edtt_srx2_scratch.pt`` and ``edtt_srx2_finetune.pt``. Probe set: the images bundled
with the package, ``--n-samples`` deterministic 48 px crops. Timed, alternately, ``--repeats`` times
(the minimum of each is printed):

* bare: both models' forward passes over every batch (``torch.inference_mode``), nothing else;
* contrast: ``contrast_models`` -- feature hooks, three streaming CKA accumulators (A x A, B x B, A x B,
  24 x 24 blocks each), bootstrap intervals, attention-distance hooks on all 48 attention modules of each
  model -- the same forward passes included;
* report: the contrast plus writing the PDF (``write_report``: heatmaps, difference, attention curves,
  tables, findings).

Ratios are over ``bare``; "overhead" is ratio - 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cka_lab.analysis.compare import probe_loader  # noqa: E402
from cka_lab.analysis.contrast import contrast_models  # noqa: E402
from cka_lab.models import load_model  # noqa: E402
from cka_lab.reports import model_info, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    paths = [REPO / "checkpoints" / "edtt_srx2_scratch.pt", REPO / "checkpoints" / "edtt_srx2_finetune.pt"]
    a, b = (load_model(p, device=dev) for p in paths)
    batches, label = probe_loader(None, patch=48, n_samples=args.n_samples, seed=0, batch_size=args.batch_size)
    batches = [x.to(dev) for x in batches]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare():
        with torch.inference_mode():
            for x in batches:
                a.forward_task(x, "x2")
                b.forward_task(x, "x2")
        sync()

    def contrast():
        out = contrast_models(a, b, batches=batches, name_a="scratch", name_b="finetune", device=dev, progress=False)
        sync()
        return out

    times = {"bare": [], "contrast": [], "report": []}
    bare()  # warm-up (allocator, masks)
    with tempfile.TemporaryDirectory() as tmp:
        infos = [model_info(p.stem, p, m) for p, m in zip(paths, (a, b))]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bare()
            times["bare"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c = contrast()
            times["contrast"].append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            write_report(Path(tmp) / "r.pdf", [c], infos)
            times["report"].append(times["contrast"][-1] + time.perf_counter() - t1)
    best = {k: min(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}; "
          f"{args.n_samples} crops of 48 px ({label}), batches of {args.batch_size}, best of {args.repeats}")
    print(f"{'bare forward passes (2 models)':<44} {best['bare']:8.2f} s   1.00x")
    for key, what in (("contrast", "CKA (3 maps) + attention distance"), ("report", "... + PDF report")):
        print(f"{what:<44} {best[key]:8.2f} s   {best[key] / best['bare']:.2f}x  "
              f"(overhead {100 * (best[key] / best['bare'] - 1):.0f}%)")


if __name__ == "__main__":
    main()
