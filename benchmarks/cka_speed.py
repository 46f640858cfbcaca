"""Minibatch CKA: cka_lab against its peers on one fixed workload, in one run.

Workload: two 12-block conv nets (3×3 conv, 64 channels, ReLU, padding 1; stride 2 in blocks 0, 4, 8;
Kaiming-normal weights, seeds 1 and 2), standard-normal 3×32×32 inputs drawn batch by batch from a
generator seeded 0 (so no N-sized input array exists), batches of 128, the 12×12 CKA matrix between
``layers.0`` … ``layers.11`` of the two nets.

Printed per method, each configuration measured in its own child process (``--only NAME --n N``):

* time over the bare forward passes of both nets: inside the child, every batch is also pushed through
  hook-free copies of the nets right before the method sees it, so the two timings share the machine's
  state; ratio = median over batches of (method's time on the batch) / (bare forward of that batch);
* max |error| against a float64 reference: Song et al.'s unbiased HSIC_1 formula, written out here,
  summed over the same batches (all peers compute this same minibatch estimator);
* peak RSS of the child (``ru_maxrss``) for N = 2048 and N = 16384: flat in N means no per-sample state.

Two allocator settings, one table each (``--allocator``):

* ``default``: glibc as it comes. Every block output of 4-8 MB is a fresh ``mmap`` whose pages fault in
  on first touch, and that costs the bare forward passes as much as a third of their time -- time that a
  method holding its features between batches partly does not pay, so ratios here can drop below 1;
* ``steady``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4G`` keep freed memory for reuse, so the bare
  forward measures the convolutions and the ratio measures the method's own work. This is the fair one.

Every child runs with ``OMP_WAIT_POLICY=PASSIVE`` (what importing cka_lab sets). The row
``exact Gram floor`` is the cost of the 24 float32 Gram matrices alone, by the fastest kernel here
(cka_lab's ``x_xt``): no exact method can be cheaper than that.

Peers (``pip install -e .[bench]``): pytorch-cka (module ``cka``), cka-pytorch, torch-cka, ckatorch.

Usage: ``python benchmarks/cka_speed.py [--quick] [--methods cka_lab,pytorch-cka] [--allocator both]``.
The full run takes about 20 minutes on 2 idle CPU cores, most of it in the slowest peers (torch-cka,
cka-pytorch) and the float64 reference.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

LAYERS = [f"layers.{i}" for i in range(12)]
BATCH = 128
INSTALL = "pip install -e .[bench]"
ESTIMATOR = "minibatch unbiased HSIC_1 (Nguyen et al. 2021)"


# ---- workload ---------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """12 blocks of (3×3 conv, 64 channels, ReLU); stride 2 in blocks 0, 4, 8. (B, 3, 32, 32) -> (B, 64, 2, 2)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        blocks = []
        for i in range(12):
            conv = nn.Conv2d(3 if i == 0 else 64, 64, 3, stride=2 if i in (0, 4, 8) else 1, padding=1)
            with torch.no_grad():
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=gen)
                nn.init.zeros_(conv.bias)
            blocks.append(nn.Sequential(conv, nn.ReLU()))
        self.layers = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layers:
            x = block(x)
        return x


class Inputs:
    """N standard-normal (3, 32, 32) images in batches, generated lazily from seed 0.

    Before yielding a batch it runs it through ``bare`` (hook-free copies of the nets) and records that
    time in ``bare_times``; the time until the consumer asks for the next batch (the method's work on
    this batch) goes to ``step_times``.
    """

    def __init__(self, n: int, bare: Callable[[Tensor], None] | None = None, with_label: bool = False) -> None:
        self.n, self.bare, self.with_label = n, bare, with_label
        self.bare_times: list[float] = []
        self.step_times: list[float] = []

    @property
    def bare_seconds(self) -> float:
        return sum(self.bare_times)

    def __len__(self) -> int:
        return math.ceil(self.n / BATCH)

    def __iter__(self) -> Iterator[object]:
        gen = torch.Generator().manual_seed(0)
        for start in range(0, self.n, BATCH):
            x = torch.randn(min(BATCH, self.n - start), 3, 32, 32, generator=gen)
            if self.bare is not None:
                t0 = time.perf_counter()
                self.bare(x)
                self.bare_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            yield (x, 0) if self.with_label else x
            self.step_times.append(time.perf_counter() - t0)


def nets() -> tuple[ConvNet, ConvNet]:
    return ConvNet(1).eval(), ConvNet(2).eval()


def bare_forward(a: nn.Module, b: nn.Module) -> Callable[[Tensor], None]:
    a, b = copy.deepcopy(a), copy.deepcopy(b)

    def run(x: Tensor) -> None:
        with torch.inference_mode():
            a(x)
            b(x)

    return run


def block_outputs(model: ConvNet, x: Tensor) -> list[Tensor]:
    """The 12 block outputs (B, 64, H, W), without hooks."""
    outs = []
    for block in model.layers:
        x = block(x)
        outs.append(x)
    return outs


# ---- methods: each returns ((La, Lb) CKA as nested lists, loop seconds, the Inputs it used) ----


def run_bare(n: int) -> tuple[None, float, Inputs]:
    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))  # warm-up
    loader = Inputs(n, run)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return None, time.perf_counter() - t0, loader


def song_hsic1(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3)), K̃, L̃ with zero diagonals (float64)."""
    n = k.shape[0]
    kt = k - torch.diag(torch.diag(k))
    lt = l - torch.diag(torch.diag(l))
    one = torch.ones(n, 1, dtype=torch.float64)
    value = torch.trace(kt @ lt)
    value = value + (one.T @ kt @ one).squeeze() * (one.T @ lt @ one).squeeze() / ((n - 1) * (n - 2))
    value = value - 2.0 / (n - 2) * (one.T @ kt @ lt @ one).squeeze()
    return value / (n * (n - 3))


def run_reference(n: int) -> tuple[list, float, Inputs]:
    a, b = nets()
    loader = Inputs(n, bare_forward(a, b))
    xy = torch.zeros(12, 12, dtype=torch.float64)
    xx = torch.zeros(12, dtype=torch.float64)
    yy = torch.zeros(12, dtype=torch.float64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            ka = [(f.flatten(1).double() @ f.flatten(1).double().T) for f in block_outputs(a, x)]
            kb = [(f.flatten(1).double() @ f.flatten(1).double().T) for f in block_outputs(b, x)]
            for i in range(12):
                xx[i] += song_hsic1(ka[i], ka[i])
                yy[i] += song_hsic1(kb[i], kb[i])
                for j in range(12):
                    xy[i, j] += song_hsic1(ka[i], kb[j])
    cka = xy / torch.sqrt(xx[:, None] * yy[None, :])
    return cka.tolist(), time.perf_counter() - t0, loader


def run_cka_lab(n: int) -> tuple[list, float, Inputs]:
    from cka_lab.features import FeatureExtractor
    from cka_lab.metrics.cka import MinibatchCKA

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    loader = Inputs(n, run)
    t0 = time.perf_counter()
    with FeatureExtractor(a, "layers.*") as ext_a, FeatureExtractor(b, "layers.*") as ext_b, torch.inference_mode():
        metric = MinibatchCKA(ext_a.layers, ext_b.layers)
        for x in loader:
            a(x)
            b(x)
            metric.update(ext_a.features, ext_b.features)
        cka = metric.compute()
    return cka.tolist(), time.perf_counter() - t0, loader


def run_gram_floor(n: int) -> tuple[None, float, Inputs]:
    """Only the 24 float32 Grams of each batch (no hooks, no centring, no sums): the floor of exact methods."""
    from cka_lab.metrics.cka import x_xt

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    loader = Inputs(n, run)
    with torch.inference_mode():
        x_xt(block_outputs(a, torch.randn(BATCH, 3, 32, 32))[0].flatten(1))  # warm-up, the kernel's one-time check
        t0 = time.perf_counter()
        for x in loader:
            for f in block_outputs(a, x) + block_outputs(b, x):
                x_xt(f.flatten(1))
    return None, time.perf_counter() - t0, loader


def run_pytorch_cka(n: int) -> tuple[list, float, Inputs]:
    from cka import compute_cka  # pytorch-cka

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    loader = Inputs(n, run)
    t0 = time.perf_counter()
    (cka,) = compute_cka(a, b, loader, layers=LAYERS, model2_layers=LAYERS, device="cpu", progress=False)
    return cka.tolist(), time.perf_counter() - t0, loader


def hide_broken_torchvision() -> None:
    """Make a torchvision that cannot load look absent, so that cka-pytorch's dependencies skip it.

    cka-pytorch needs torchvision only through torchmetrics, which imports it when its metadata says it
    is installed. The torchvision wheel pip picks from PyPI for torch's CPU build fails to load
    (``operator torchvision::nms does not exist``); cka-pytorch itself never calls it.
    """
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return
    except RuntimeError:
        pass
    import importlib.abc
    import importlib.metadata

    import lightning_utilities.core.imports as requirement_checks

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    version = requirement_checks._version

    def version_without_torchvision(name: str) -> str:
        if name == "torchvision":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    class HideTorchvision(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
            if name == "torchvision" or name.startswith("torchvision."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden: it does not load here)", name=name)
            return None

    requirement_checks._version = version_without_torchvision
    sys.meta_path.insert(0, HideTorchvision())


def run_cka_pytorch(n: int) -> tuple[list, float, Inputs]:
    hide_broken_torchvision()
    from cka_pytorch import CKACalculator

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    relus = [f"{name}.1" for name in LAYERS]  # it hooks leaves, not Sequential blocks: the block's ReLU
    loader = Inputs(n, run, with_label=True)
    t0 = time.perf_counter()
    calc = CKACalculator(a, b, model1_layers=relus, model2_layers=relus, device=torch.device("cpu"), verbose=False)
    if calc.hook_manager1.module_names != relus:
        raise RuntimeError(f"cka-pytorch hooked {calc.hook_manager1.module_names}")
    cka = calc.calculate_cka_matrix(loader, num_epochs=1)
    return cka.tolist(), time.perf_counter() - t0, loader


def run_torch_cka(n: int) -> tuple[list, float, Inputs]:
    from torch.utils.data import TensorDataset

    from torch_cka import CKA

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    timed = Inputs(n, run, with_label=True)

    class Loader:
        """What compare() uses of a DataLoader (.dataset, len, iteration), without an N-sized dataset."""

        dataset = TensorDataset(torch.zeros(1))

        def __init__(self, inputs: Inputs) -> None:
            self.inputs = inputs

        def __len__(self) -> int:
            return len(self.inputs)

        def __iter__(self) -> Iterator[object]:
            return iter(self.inputs)

    t0 = time.perf_counter()
    cka = CKA(a, b, model1_name="A", model2_name="B", model1_layers=LAYERS, model2_layers=LAYERS, device="cpu")
    with torch.inference_mode():
        # one loader per model (zipped); the same seed gives the same batches, the bare run only in one
        cka.compare(Loader(timed), Loader(Inputs(n, None, with_label=True)))
    return cka.export()["CKA"].tolist(), time.perf_counter() - t0, timed


def run_ckatorch(n: int) -> tuple[list, float, Inputs]:
    import ckatorch

    a, b = nets()
    run = bare_forward(a, b)
    run(torch.randn(BATCH, 3, 32, 32))
    loader = Inputs(n, run)
    t0 = time.perf_counter()
    # ckatorch.CKA registers the hooks; its __call__ cannot run this workload (cka_batch needs 3-D
    # features and each batch overwrites the previous one), so the loop below drives its float64
    # hsic1 core (what cka_batch computes) batch by batch, with every layer pair in one call.
    hooks = ckatorch.CKA(a, b, layers=LAYERS, first_name="A", second_name="B")
    pairs_i = torch.arange(12).repeat_interleave(12)
    pairs_j = torch.arange(12).repeat(12)
    xy = torch.zeros(144, dtype=torch.float64)
    xx = torch.zeros(12, dtype=torch.float64)
    yy = torch.zeros(12, dtype=torch.float64)
    with torch.inference_mode():
        for x in loader:
            a(x)
            b(x)
            ga = torch.stack([ckatorch.linear_kernel(hooks.first_features[m].flatten(1).double()) for m in LAYERS])
            gb = torch.stack([ckatorch.linear_kernel(hooks.second_features[m].flatten(1).double()) for m in LAYERS])
            xy += ckatorch.hsic1(ga[pairs_i], gb[pairs_j])
            xx += ckatorch.hsic1(ga, ga)
            yy += ckatorch.hsic1(gb, gb)
    cka = xy.reshape(12, 12) / torch.sqrt(xx[:, None] * yy[None, :])
    return cka.tolist(), time.perf_counter() - t0, loader


METHODS: dict[str, tuple[Callable[[int], tuple], str | None, str]] = {
    # name: (runner, module to import or None, estimator and precision)
    "bare forward": (run_bare, None, "-"),
    "reference": (run_reference, None, "float64 Song et al. formula"),
    "exact Gram floor": (run_gram_floor, "cka_lab", "the 24 float32 Grams alone, nothing else"),
    "cka_lab": (run_cka_lab, "cka_lab", "float32 Gram (oneDNN on CPU), float64 U-centring and sums"),
    "pytorch-cka": (run_pytorch_cka, "cka", "float32 throughout; clamps to [0, 1]"),
    "cka-pytorch": (run_cka_pytorch, "cka_pytorch", "float32 throughout; +1e-4 under the sqrt"),
    "torch-cka": (run_torch_cka, "torch_cka", "float32, per-pair Python loop with .item()"),
    "ckatorch": (run_ckatorch, "ckatorch", "float64 Grams and hsic1 (core driven by this script)"),
}


# ---- child and parent ------------------------------------------------------------------------------


def child(name: str, n: int) -> None:
    runner = METHODS[name][0]
    try:
        matrix, seconds, inputs = runner(n)
        per_batch = [step / bare for step, bare in zip(inputs.step_times, inputs.bare_times)]
        result = {
            "method": name,
            "matrix": matrix,
            "seconds": seconds,
            "bare": inputs.bare_seconds,
            "median_ratio": statistics.median(per_batch) if per_batch else math.nan,
        }
    except ImportError as err:
        result = {"missing": str(err)}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["rss_mb"] = rss_kb / 1024
    print("RESULT " + json.dumps(result))


ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "steady": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)},
}


def measure(name: str, n: int, allocator: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **ALLOCATORS[allocator]}
    proc = subprocess.run(
        [sys.executable, __file__, "--only", name, "--n", str(n)],
        capture_output=True, text=True, check=False, env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"failed": tail}


def max_error(got: list | None, want: list | None) -> float | None:
    if got is None or want is None:
        return None
    return float((torch.tensor(got, dtype=torch.float64) - torch.tensor(want, dtype=torch.float64)).abs().max())


def ratio(r: dict) -> float:
    """Method time over the bare forward time, both measured in the same child, batch by batch.

    The median over batches of (the method's time on a batch) / (the bare forward of that batch):
    robust to load from other processes and to first-batch warm-up. 1 for the bare row by definition.
    """
    return 1.0 if r["method"] == "bare forward" else r["median_ratio"]


def gram_flop_share(batch: int) -> float:
    """FLOPs of the 24 float32 Grams (B×B from B×D, as a GEMM) over the FLOPs of both forward passes."""
    x = torch.zeros(1, 3, 32, 32)
    conv_flops = gram_flops = 0
    for block in ConvNet(1).layers:
        conv = block[0]
        y = block(x)
        conv_flops += 2 * y.numel() * conv.in_channels * 9  # per sample
        gram_flops += 2 * batch * y.numel()  # per sample: one row of a B×B Gram over D = y.numel()
        x = y
    return gram_flops / conv_flops


def print_table(title: str, results: dict[str, dict[int, dict]], ref: dict[int, dict], sizes: tuple[int, int]) -> list[str]:
    """One table of ratio, max error and peak RSS per method; returns the one-line summaries."""
    print(f"\n== allocator: {title}")
    header = (
        f"{'method':16s} {'time N=' + str(sizes[0]):>12s} {'N=' + str(sizes[1]):>8s}  {'max err N=' + str(sizes[0]):>14s} "
        f"{'N=' + str(sizes[1]):>8s}  {'peak RSS N=' + str(sizes[0]):>15s} {'N=' + str(sizes[1]):>8s}  precision"
    )
    print(header)
    print("-" * len(header))
    summaries = []
    for name, (_, _, precision) in METHODS.items():
        if name not in results:
            continue
        r = results[name]
        problem = next((v for v in r.values() if "missing" in v or "failed" in v), None)
        if problem is not None and "missing" in problem:
            print(f"{name:16s} not installed ({problem['missing']}); install the peers with `{INSTALL}`")
            continue
        if problem is not None:
            print(f"{name:16s} failed: {problem['failed']}")
            continue
        no_error = name in ("bare forward", "reference", "exact Gram floor")
        errs = [max_error(r[n].get("matrix"), ref.get(n, {}).get("matrix")) for n in sizes]
        err_txt = ["-" if e is None or no_error else f"{e:.1e}" for e in errs]
        rss = [f"{r[n]['rss_mb']:.0f} MB" for n in sizes]
        print(
            f"{name:16s} {ratio(r[sizes[0]]):>11.2f}x {ratio(r[sizes[1]]):>7.2f}x  {err_txt[0]:>14s} "
            f"{err_txt[1]:>8s}  {rss[0]:>15s} {rss[1]:>8s}  {precision}"
        )
        if not no_error:
            worst = max((e for e in errs if e is not None), default=math.nan)
            summaries.append(
                f"[{title}] {name}: {ratio(r[sizes[0]]):.2f}x / {ratio(r[sizes[1]]):.2f}x forward, max err {worst:.0e}, "
                f"peak RSS {rss[0]} / {rss[1]}"
            )
    bare = results["bare forward"][sizes[1]]
    if "bare" in bare:
        print(f"bare forward of both nets, N={sizes[1]}: {bare['bare']:.1f} s")
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: N = 512 and 1024")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset to measure (default: all; bare forward, the Gram floor and the reference always run)",
    )
    parser.add_argument(
        "--allocator", choices=["default", "steady", "both"], default="both",
        help="glibc as it comes, a heap that keeps freed memory (the fair baseline), or both (default)",
    )
    parser.add_argument("--only", choices=list(METHODS), help="(internal) measure one method in this process")
    parser.add_argument("--n", type=int, default=2048, help="(internal) number of samples for --only")
    args = parser.parse_args()
    if args.only:
        child(args.only, args.n)
        return

    sizes = (512, 1024) if args.quick else (2048, 16384)
    print(
        f"cka_speed: 2 ConvNets (12 blocks, 64 ch, 32x32 inputs), 12x12 layers, batches of {BATCH}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY=PASSIVE",
        flush=True,
    )
    chosen = {"bare forward", "reference", "exact Gram floor", *(m.strip() for m in args.methods.split(","))}
    unknown = chosen - set(METHODS)
    if unknown:
        parser.error(f"unknown method {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    allocators = ["default", "steady"] if args.allocator == "both" else [args.allocator]
    results: dict[str, dict[str, dict[int, dict]]] = {a: {} for a in allocators}
    ref: dict[int, dict] = {}
    for n in sizes:  # the float64 reference: its matrix does not depend on the allocator, so once (last table)
        t0 = time.perf_counter()
        ref[n] = measure("reference", n, allocators[-1])
        print(f"  reference N={n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results[allocators[-1]]["reference"] = ref
    for allocator in allocators:
        for name in (m for m in METHODS if m in chosen and m != "reference"):
            results[allocator][name] = {}
            for n in sizes:
                t0 = time.perf_counter()
                results[allocator][name][n] = measure(name, n, allocator)
                print(f"  [{allocator}] {name} N={n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    print(f"estimator: {ESTIMATOR}; every peer below computes this same estimator")
    print(
        "time: median over batches of (method's time on the batch) / (bare forward of both nets on the same batch, "
        "run right before it in the same process)"
    )
    share = gram_flop_share(BATCH)
    print(
        f"FLOPs: the exact Grams are {share:.2f}x the forward's FLOPs ({share / 2:.2f}x computing one triangle); "
        f"1.05x would need them at {share / 0.05:.0f}x the convolutions' FLOP rate"
    )
    summaries = []
    for allocator in allocators:
        title = "default (glibc as it comes)" if allocator == "default" else "steady (MALLOC_MMAP_MAX_=0: the fair one)"
        summaries += print_table(title, results[allocator], ref, sizes)
    print("\n" + "\n".join(summaries))


if __name__ == "__main__":
    main()
