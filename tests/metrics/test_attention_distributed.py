"""AttentionDistance across two CPU processes (gloo): crops sharded over ranks give the one-process table."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention import AttentionDistance
from cka_lab.models import create_edt
from tests.threads import one_thread

WORLD = 2
BATCHES = 4  # of 2 crops each; rank r takes batches r and r + 2
COLUMNS = ["distance", "uniform_distance", "locality", "locality_lower", "locality_upper", "entropy",
           "entropy_rel", "entropy_rel_lower", "entropy_rel_upper", "max_weight", "n", "n_crops"]  # fmt: skip


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,)).eval()
    with torch.no_grad():  # sharpen attention so that heads and crops differ clearly
        for name, mod in m.named_modules():
            if name.endswith(".qkv"):
                mod.weight[:120] *= 5
    return m


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 3, 24, 24, generator=g) for _ in range(BATCHES)]


def measure(m: torch.nn.Module, xs: list[torch.Tensor]) -> AttentionDistance:
    ad = AttentionDistance(m, task="x2")
    with ad, torch.no_grad():
        for x in xs:
            m.forward_task(x, "x2")
    return ad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        m = model()
        mine = [x for i, x in enumerate(batches()) if i % WORLD == rank]
        ad = measure(m, mine)
        synced_by_compute = ad.compute()  # torchmetrics gathers every rank's crops in compute()
        local_crops = ad.metric_state  # compute() restores this rank's own crops afterwards
        n_local = sum(t.numel() for t in next(iter(local_crops.values())))
        ad.all_reduce()  # the explicit protocol: every rank now holds all crops
        reduced = ad.compute()
        summary = ad.summary()
        torch.save(
            {"compute": synced_by_compute.to_dict("list"), "all_reduce": reduced.to_dict("list"),
             "summary": summary.to_dict("list"), "n_local": n_local},
            Path(out_dir) / f"rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> AttentionDistance:
    with one_thread():  # as each rank
        return measure(model(), batches())


def assert_frames_close(got: dict, want: pd.DataFrame) -> None:
    got = pd.DataFrame(got)
    assert len(got) == len(want)
    for col in COLUMNS:
        torch.testing.assert_close(torch.tensor(got[col].values, dtype=torch.float64),
                                   torch.tensor(want[col].values, dtype=torch.float64), rtol=0, atol=1e-9)  # fmt: skip


@pytest.mark.slow
def test_two_processes_equal_one_process(rank_results: list[dict], single: AttentionDistance):
    want, want_summary = single.compute(), single.summary()
    assert (want.n_crops == BATCHES * 2).all()
    for result in rank_results:
        assert_frames_close(result["compute"], want)
        assert_frames_close(result["all_reduce"], want)
        assert_frames_close(result["summary"], want_summary)
    # each rank accumulated only its own half of the crops before the all-reduce
    n_all = sum(t.numel() for t in next(iter(single.metric_state.values())))
    assert rank_results[0]["n_local"] == rank_results[1]["n_local"] == n_all // 2


def test_all_reduce_without_a_process_group_is_an_error():
    torch.manual_seed(0)
    with pytest.raises(CkaLabError, match="init_process_group"):
        AttentionDistance(create_edt("SRx2_EDTT", depths=(2,), num_heads=(6,))).all_reduce()
