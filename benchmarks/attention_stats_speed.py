"""Attention statistics per attention map: the xlogy entropy (the previous implementation) against the
entropy from the softmax logits, measured in one run on the maps of a bundled EDT-T.

    python -u benchmarks/attention_stats_speed.py [--n-samples 8] [--repeats 3]

Maps: the softmax inputs and outputs of every window-attention module of ``edtt_srx2_scratch.pt`` on
``--n-samples`` bundled 48 px probe crops (one forward, explicit path; every map is kept, about
0.8 GB of logits and weights per crop). Timed, alternately, per setting
(the minimum over ``--repeats`` of the total over all maps is printed):

* xlogy / 64 MiB chunks: ``attention_row_stats(attn)`` with ``-sum xlogy(a, a)`` and the previous chunk size;
* logits / 64 MiB chunks: the entropy as ``max z - log max a - sum a z``;
* logits / 16 MiB chunks: the current default.

The entropy difference between the two formulas is printed per row (nats), beside the softmax time of
the same maps (the floor any statistic of the map is compared with).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cka_lab.analysis.compare import probe_loader
from cka_lab.metrics import attention_stats
from cka_lab.metrics.attention import attention_modules
from cka_lab.models import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = load_model(REPO / "checkpoints" / "edtt_srx2_scratch.pt")
    batches, _ = probe_loader(None, patch=48, n_samples=args.n_samples, seed=0, batch_size=args.n_samples)
    maps = []
    hooks = [m.softmax.register_forward_hook(lambda _m, i, o, w=m.window: maps.append((i[0], o, w)))
             for _, m in attention_modules(model)]
    with torch.inference_mode():
        model.forward_task(next(iter(batches)), "x2")
    for h in hooks:
        h.remove()
    crops = args.n_samples

    def run(use_logits: bool, chunk: int):
        attention_stats._CHUNK_ELEMENTS = chunk
        return [attention_stats.attention_row_stats(a, w, crops=crops, logits=z if use_logits else None)
                for z, a, w in maps]

    settings = {"xlogy, 64 MiB chunks": (False, 1 << 24), "logits, 64 MiB chunks": (True, 1 << 24),
                "logits, 16 MiB chunks": (True, 1 << 22)}
    best = {k: float("inf") for k in settings}
    best["softmax of the same maps"] = float("inf")
    for _ in range(args.repeats):
        for name, (use_logits, chunk) in settings.items():
            t0 = time.perf_counter()
            run(use_logits, chunk)
            best[name] = min(best[name], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for z, _, _ in maps:
            z.softmax(-1)
        best["softmax of the same maps"] = min(best["softmax of the same maps"], time.perf_counter() - t0)
    ref, new = run(False, 1 << 24), run(True, 1 << 22)
    diff = max(float(((r["entropy"] - n["entropy"]) / r["n"]).abs().max()) for r, n in zip(ref, new))
    elements = sum(a.numel() for _, a, _ in maps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(maps)} maps of {crops} crops, "
          f"{elements / 1e6:.0f} M weights")
    base = best["xlogy, 64 MiB chunks"]
    for name, t in best.items():
        print(f"  {name:28s} {t:7.3f} s   x{base / t:.2f} vs xlogy")
    print(f"  largest entropy difference per row: {diff:.2e} nats")


if __name__ == "__main__":
    main()
