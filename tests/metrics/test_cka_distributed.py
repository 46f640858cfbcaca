"""MinibatchCKA.all_reduce: two CPU processes (gloo) give the one-process result."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import MinibatchCKA

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
            {"cka": metric.compute(), "n_batches": metric.n_batches, "n_samples": metric.n_samples, "low": low, "high": high},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_all_reduce_on_two_processes_equals_one_process(rank_results: list[dict]):
    single = MinibatchCKA(["a0", "a1"], ["b0"])
    for feats_a, feats_b in batches():
        single.update(feats_a, feats_b)
    for result in rank_results:
        assert result["n_batches"] == BATCHES and result["n_samples"] == BATCHES * 16
        torch.testing.assert_close(result["cka"], single.compute(), rtol=0, atol=1e-12)


def test_all_reduce_gathers_kept_batches_so_every_rank_has_the_same_interval(rank_results: list[dict]):
    torch.testing.assert_close(rank_results[0]["low"], rank_results[1]["low"], rtol=0, atol=0)
    torch.testing.assert_close(rank_results[0]["high"], rank_results[1]["high"], rtol=0, atol=0)


def test_all_reduce_without_a_process_group_is_an_error():
    with pytest.raises(CkaLabError, match="init_process_group"):
        MinibatchCKA(["a"], ["b"]).all_reduce()
