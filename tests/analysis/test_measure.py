"""The measurement engine on small conv nets: estimators, paired intervals, controls, hook safety,
and a 2-process gloo run equal to one process."""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cka_lab.analysis.controls import decide, seed_pair
from cka_lab.analysis.contrast import contrast_models
from cka_lab.analysis.measure import _feature_extractors, measure
from cka_lab.analysis.probing import ProbedModel, indexed_batches
from cka_lab.analysis.spec import AnalysisSpec
from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import linear_cka
from cka_lab.models import create_edt
from tests.threads import one_thread

LAYERS = ("0", "2", "4")


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(4, 2, 3, padding=1)).eval()


def _batches(n: int = 64, bs: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 6, 6, generator=g)
    return list(indexed_batches(x.split(bs)))


def _measure(estimator: str, n: int = 64, controls: bool = True):
    spec = AnalysisSpec(layers=LAYERS, features="output", estimator=estimator, attention=False, unit_size=8)
    return measure(ProbedModel(_net(0), None), ProbedModel(_net(1), None), spec, _batches(n), controls=controls,
                   progress=False)


def _features(seed: int, x: torch.Tensor) -> list[torch.Tensor]:
    net, out = _net(seed), []
    with torch.no_grad():
        for k, layer in enumerate(net):
            x = layer(x)
            if str(k) in LAYERS:
                out.append(x.flatten(1).double())
    return out


def test_biased_full_equals_the_full_batch_formula_for_all_three_maps():
    m = _measure("biased-full")
    x = torch.cat([b.x for b in _batches()])
    fa, fb = _features(0, x), _features(1, x)
    for i, xa in enumerate(fa):
        for j, xb in enumerate(fb):
            assert m.block("ab")[i, j] == pytest.approx(linear_cka(xa, xb).item(), abs=1e-9)
            assert m.block("aa")[i, j] == pytest.approx(linear_cka(xa, fa[j]).item(), abs=1e-9)
            assert m.block("bb")[i, j] == pytest.approx(linear_cka(fb[i], xb).item(), abs=1e-9)


def test_unbiased_maps_have_a_unit_diagonal_and_intervals_that_hold_the_estimate_region():
    m = _measure("unbiased-minibatch")
    assert m.n_units == 8 and m.n_samples == 64
    np.testing.assert_allclose(np.diag(m.block("aa")), 1.0, atol=1e-12)
    low, high = m.difference_ci
    assert np.all(low <= high) and np.allclose(np.diag(low), 0) and np.allclose(np.diag(high), 0)
    assert m.control_a.shape == (3, 3) and np.all(m.control_a >= 0) and np.allclose(np.diag(m.control_a), 0)


def test_the_probe_draw_control_is_the_map_change_between_even_and_odd_units():
    m = _measure("biased-full")
    x = torch.cat([b.x for b in _batches()])
    even = torch.cat([x[k:k + 8] for k in range(0, 64, 16)])
    odd = torch.cat([x[k + 8:k + 16] for k in range(0, 64, 16)])
    fe, fo = _features(0, even), _features(0, odd)
    want = abs(linear_cka(fe[0], fe[2]).item() - linear_cka(fo[0], fo[2]).item())
    assert m.control_a[0, 2] == pytest.approx(want, abs=1e-9)


def test_decide_states_an_effect_only_beyond_interval_and_every_control():
    effect = np.array([0.2, 0.2, 0.2, -0.3, 0.2])
    low = np.array([0.1, -0.01, 0.1, -0.4, 0.1])
    high = np.array([0.3, 0.4, 0.3, -0.2, 0.3])
    controls = [np.array([0.05, 0.05, 0.25, 0.1, np.nan]), np.array([0.1, 0.1, 0.1, 0.29, np.nan])]
    d = decide(effect, low, high, controls)
    assert d.stated.tolist() == [True, False, False, True, False]  # 2: interval holds 0; 3: control; 5: no control
    assert d.strongest() == (3,)


def test_seed_pairs_differ_in_the_run_seed_only():
    base = "[run]\nname = 'a'\nseed = {s}\n[model]\narch = 'SRx2_EDTT'\n[optim]\nlr = {lr}\n"
    a = {"config_toml": base.format(s=0, lr=1e-3), "iteration": 10}
    assert seed_pair(a, {"config_toml": base.format(s=1, lr=1e-3).replace("'a'", "'b'"), "iteration": 10})
    assert not seed_pair(a, {"config_toml": base.format(s=0, lr=1e-3), "iteration": 10})  # same seed
    assert not seed_pair(a, {"config_toml": base.format(s=1, lr=2e-3), "iteration": 10})  # another config
    assert not seed_pair(a, {"source": "untrained"})


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_failing_hook_context_leaves_no_hook():
    a, b = _net(0), _net(1)
    with pytest.raises(CkaLabError, match="unknown layer"):
        with ExitStack() as stack:
            _feature_extractors(stack, [ProbedModel(a, None), ProbedModel(b, None)], [["0"], ["nope"]], "output")
    assert _hooks(a) == 0 and _hooks(b) == 0


def test_a_contrast_whose_attention_hooks_fail_to_enter_leaves_no_hook(monkeypatch):
    from cka_lab.metrics import attention

    sr, sr2 = create_edt("SRx2_EDTT"), create_edt("SRx2_EDTT")
    calls = []

    def fail_second(self):
        calls.append(self)
        if len(calls) == 2:
            raise CkaLabError("attention hooks failed")
        return enter(self)

    enter = attention.AttentionDistance.__enter__
    monkeypatch.setattr(attention.AttentionDistance, "__enter__", fail_second)
    x = torch.rand(8, 3, 48, 48)
    with pytest.raises(CkaLabError, match="attention hooks failed"):
        contrast_models(sr, sr2, AnalysisSpec(layers="body.layers.0", unit_size=4), batches=[x], progress=False)
    assert _hooks(sr) == 0 and _hooks(sr2) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, estimator: str, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = _measure(estimator)
        if rank == 0:
            out[estimator] = (m.matrix, m.difference_ci, m.control_a, m.n_samples)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["unbiased-minibatch", "biased-full"])
def test_two_gloo_processes_give_the_one_process_result(estimator):
    with one_thread():  # as each rank
        one = _measure(estimator)
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(2, _free_port(), estimator, out), nprocs=2, join=True)
    matrix, (low, high), control, n = out[estimator]
    assert n == 64
    np.testing.assert_allclose(matrix, one.matrix, atol=1e-9)
    np.testing.assert_allclose(low, one.difference_ci[0], atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(high, one.difference_ci[1], atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(control, one.control_a, atol=1e-9)


def test_a_seed_pair_among_the_contrasts_gives_the_seed_to_seed_control():
    from cka_lab.analysis.compare import Comparison
    from cka_lab.analysis.contrast import Contrast, attach_seed_controls

    def comp(name, value):
        m = np.full((2, 2), value)
        np.fill_diagonal(m, 1.0)
        return Comparison(name, name, "SRx2_EDTT", "SRx2_EDTT", "x2", "x2", ["l0", "l1"], ["l0", "l1"], m, 64, 8, 48, "", n_units=8)

    def contrast(a, va, b, vb):
        return Contrast(a, b, comp(a, va), comp(b, vb), comp(a, 0.5))

    cfg = "[run]\nseed = {s}\n[model]\narch = 'SRx2_EDTT'\n"
    metas = {"s0": {"config_toml": cfg.format(s=0)}, "s1": {"config_toml": cfg.format(s=1)},
             "pre": {"config_toml": cfg.format(s=0) + "[finetune]\ninit = 'p.pt'\n"}}
    first, second = contrast("s0", 0.9, "pre", 0.7), contrast("s0", 0.9, "s1", 0.8)
    attach_seed_controls([first, second], metas)
    np.testing.assert_allclose(first.seed_control, [[0.0, 0.1], [0.1, 0.0]])
    assert first.seed_control_label == "s0 / s1"
    # the scratch-vs-pretrained difference (0.2) clears the seed control (0.1) only where the interval allows
    first.difference_low, first.difference_high = np.full((2, 2), 0.15), np.full((2, 2), 0.25)
    assert first.difference_decision().stated[0, 1]
