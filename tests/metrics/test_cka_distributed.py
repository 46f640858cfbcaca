"""all_reduce / sync of the CKA accumulators: two CPU processes (gloo) give the one-process result.

Besides per-batch MinibatchCKA (batches dealt round-robin), the crops are sharded contiguously in
whole units (rank r takes crops [48 r, 48 (r+1))) for MinibatchCKA with units of 8, FullBatchCKA and
cka_by_passes with both estimators: matrix and interval equal one process to 1e-9.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import CKASpec, FullBatchCKA, MinibatchCKA, cka_by_passes

WORLD = 2
BATCHES = 6  # rank r takes batches r, r + 2, r + 4


def batches() -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(BATCHES):
        z = torch.randn(16, 4, generator=g)
        feats_a = {"a0": z @ torch.randn(4, 12, generator=g) + 1.0, "a1": torch.relu(z @ torch.randn(4, 20, generator=g))}
        feats_b = {"b0": torch.tanh(z @ torch.randn(4, 9, generator=g)) + 0.2 * torch.randn(16, 9, generator=g)}
        out.append((feats_a, feats_b))
    return out


CROPS = 96


def crops() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Features of 96 crops: two layers of A, two of B."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(CROPS, 4, generator=g)
    feats_a = {"a0": z @ torch.randn(4, 12, generator=g) + 1.0, "a1": torch.relu(z @ torch.randn(4, 20, generator=g))}
    feats_b = {"b0": torch.tanh(z @ torch.randn(4, 9, generator=g)) + 0.2 * torch.randn(CROPS, 9, generator=g),
               "b1": torch.randn(CROPS, 6, generator=g)}
    return feats_a, feats_b


def shard_batches(rank: int | None, batch: int = 16):
    """This rank's contiguous share of the crops (all of them for rank None), in batches."""
    feats_a, feats_b = crops()
    lo, hi = (0, CROPS) if rank is None else (rank * CROPS // WORLD, (rank + 1) * CROPS // WORLD)
    for s in range(lo, hi, batch):
        yield ({k: v[s : min(s + batch, hi)] for k, v in feats_a.items()},
               {k: v[s : min(s + batch, hi)] for k, v in feats_b.items()})


def sharded_results(rank: int | None) -> dict[str, object]:
    """matrix/lower/upper of every sharded estimator; rank None: one process, no reduction."""
    out: dict[str, object] = {}
    units = MinibatchCKA(["a0", "a1"], ["b0", "b1"], keep_batches=True, unit_size=8)
    full = FullBatchCKA(["a0", "a1"], ["b0", "b1"])
    for feats_a, feats_b in shard_batches(rank):
        units.update(feats_a, feats_b)
        full.update(feats_a, feats_b)
    if rank is not None:
        units.all_reduce()
        full.all_reduce()
    results = {"units": units.result(), "full": full.result()}

    def run(group_a, group_b):
        for feats_a, feats_b in shard_batches(rank):
            yield {k: feats_a[k] for k in group_a}, {k: feats_b[k] for k in group_b}

    for estimator in ("unbiased-minibatch", "biased-full"):
        # Grams, scratch and 20 floats per crop of features: passes a0 | a1 | b0 + b1
        budget = 4 * CROPS * CROPS * 8 + 3 * CROPS * CROPS * 8 + 64 * 2**20 + CROPS * 20 * 4
        results[estimator] = cka_by_passes(["a0", "a1"], ["b0", "b1"], run, CKASpec(estimator=estimator, max_bytes=budget),
                                           n_samples=CROPS, feature_numel={"a0": 12, "a1": 20, "b0": 9, "b1": 6},
                                           distributed=rank is not None)
    for name, res in results.items():
        out[name] = {"matrix": torch.from_numpy(res.matrix), "lower": torch.from_numpy(res.lower),
                     "upper": torch.from_numpy(res.upper), "n_samples": res.n_samples, "passes": res.passes}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        metric = MinibatchCKA(["a0", "a1"], ["b0"], keep_batches=True)
        for i, (feats_a, feats_b) in enumerate(batches()):
            if i % WORLD == rank:
                metric.update(feats_a, feats_b)
        metric.all_reduce()
        low, high = metric.confidence_interval(n_boot=50, seed=3)
        torch.save(
            {"cka": metric.compute(), "n_batches": metric.n_batches, "n_samples": metric.n_samples, "low": low, "high": high,
             "sharded": sharded_results(rank)},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_all_reduce_on_two_processes_equals_one_process(rank_results: list[dict]):
    single = MinibatchCKA(["a0", "a1"], ["b0"])
    for feats_a, feats_b in batches():
        single.update(feats_a, feats_b)
    for result in rank_results:
        assert result["n_batches"] == BATCHES and result["n_samples"] == BATCHES * 16
        torch.testing.assert_close(result["cka"], single.compute(), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_all_reduce_gathers_kept_batches_so_every_rank_has_the_same_interval(rank_results: list[dict]):
    torch.testing.assert_close(rank_results[0]["low"], rank_results[1]["low"], rtol=0, atol=0)
    torch.testing.assert_close(rank_results[0]["high"], rank_results[1]["high"], rtol=0, atol=0)


def test_all_reduce_without_a_process_group_is_an_error():
    with pytest.raises(CkaLabError, match="init_process_group"):
        MinibatchCKA(["a"], ["b"]).all_reduce()


@pytest.mark.slow
def test_contiguous_shards_equal_one_process_for_every_estimator(rank_results: list[dict]):
    single = sharded_results(None)
    assert single["biased-full"]["passes"] == 3
    for result in rank_results:
        for name, want in single.items():
            got = result["sharded"][name]
            assert got["n_samples"] == CROPS and got["passes"] == want["passes"], name
            for key in ("matrix", "lower", "upper"):
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-9, msg=f"{name} {key}")
