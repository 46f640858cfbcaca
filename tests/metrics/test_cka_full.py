"""biased-full: the exact biased linear CKA of Kornblith et al. (2019), streamed and by passes.

The reference is written from the paper with an explicit centring matrix H = I - 11ᵀ/n in float64:
HSIC(K, L) = tr(K H L H) / (n-1)², CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import (
    ESTIMATORS,
    FullBatchCKA,
    MinibatchCKA,
    check_estimator,
    CKASpec,
    cka_by_passes,
    group_bounds,
    plan_passes,
)


def kornblith_matrix(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """CKA of every (x, y) pair from HSIC(K, L) = tr(K H L H)/(n-1)², H = I - 11ᵀ/n, float64.

    tr(K H L H) = tr((H K H)(H L H)) (H is symmetric and idempotent), so each layer's H K H is formed
    once with the explicit H, and the trace of the product of two symmetric matrices is the sum of
    their elementwise product.
    """
    n = xs[0].shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def centred(f: np.ndarray) -> np.ndarray:
        f = f.reshape(n, -1).astype(np.float64)
        return h @ (f @ f.T) @ h

    kc = [centred(x) for x in xs]
    lc = [centred(y) for y in ys]

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float((a * b).sum()) / (n - 1) ** 2

    out = np.empty((len(xs), len(ys)))
    for i, k in enumerate(kc):
        for j, l in enumerate(lc):  # noqa: E741
            out[i, j] = hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))
    return out


def layers(n: int, seed: int, dtype=torch.float64) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Three layers of A and three of B over n crops: shared latent, offsets, different widths and shapes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    a = {
        "a0": (z @ torch.randn(6, 2 * 4 * 4, generator=g, dtype=torch.float64) + 3.0).reshape(n, 2, 4, 4),
        "a1": torch.relu(z @ torch.randn(6, 20, generator=g, dtype=torch.float64)),
        "a2": torch.randn(n, 12, generator=g, dtype=torch.float64),
    }
    b = {
        "b0": torch.tanh(z @ torch.randn(6, 9, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(n, 9, generator=g, dtype=torch.float64),
        "b1": (z[:, :3] ** 2 @ torch.randn(3, 3 * 5, generator=g, dtype=torch.float64)).reshape(n, 3, 5),
        "b2": z @ torch.randn(6, 30, generator=g, dtype=torch.float64) - 1.0,
    }
    return {k: v.to(dtype) for k, v in a.items()}, {k: v.to(dtype) for k, v in b.items()}


def batches(feats: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = next(iter(feats.values())).shape[0]
    return [{k: v[s : s + size] for k, v in feats.items()} for s in range(0, n, size)]


def reference(a: dict, b: dict) -> np.ndarray:
    return kornblith_matrix([v.double().numpy() for v in a.values()], [v.double().numpy() for v in b.values()])


# ---- the estimator ---------------------------------------------------------------------------------


def test_estimators_are_named():
    assert ESTIMATORS == ("unbiased-minibatch", "biased-full")
    assert check_estimator("biased-full") == "biased-full"


def test_an_unknown_estimator_is_one_line_with_the_close_match():
    with pytest.raises(CkaLabError, match="did you mean 'biased-full'") as err:
        check_estimator("biased_full")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_batch_cka_equals_the_papers_formula_to_1e_9(dtype):
    """Batches of 16 streamed in; float32 features are compared with the formula on the same values."""
    a, b = layers(80, seed=1, dtype=dtype)
    metric = FullBatchCKA(list(a), list(b))
    for fa, fb in zip(batches(a, 16), batches(b, 16)):
        metric.update(fa, fb)
    want = reference(a, b)
    got = metric.compute()
    assert got.shape == (3, 3) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)
    result = metric.result()
    np.testing.assert_allclose(result.matrix, want, rtol=0, atol=1e-9)
    assert result.estimator == "biased-full" and result.n_samples == 80 and result.passes == 1


def test_a_one_by_one_result_keeps_its_matrix_shape():
    a, b = layers(20, seed=2)
    metric = FullBatchCKA(["a1"], ["b0"])
    metric.update(a, b)
    assert metric.compute().shape == (1, 1)


def test_biased_full_at_1024_crops_through_several_passes_equals_the_formula_to_1e_9():
    """The streaming path: a budget that holds the Grams and 1.5x the largest layer's features (a0: 32
    floats per crop) forces four passes, greedily: a0 | a1 (20) + a2 (12) | b0 (9) + b1 (15) | b2 (30)."""
    n = 1024
    a, b = layers(n, seed=3, dtype=torch.float32)
    numel = {name: v[0].numel() for name, v in {**a, **b}.items()}
    grams = 6 * n * n * 8
    budget = grams + 3 * n * n * 8 + 64 * 2**20 + int(1.5 * n * max(numel.values()) * 4)
    runs: list[tuple[list[str], list[str]]] = []

    def run(group_a: list[str], group_b: list[str]):
        runs.append((group_a, group_b))
        for s in range(0, n, 64):  # one pass over the crops, hooks only on the group's layers
            yield {k: a[k][s : s + 64] for k in group_a}, {k: b[k][s : s + 64] for k in group_b}

    result = cka_by_passes(list(a), list(b), run, CKASpec(estimator="biased-full", max_bytes=budget), n_samples=n,
                           feature_numel=numel)
    assert runs == [(["a0"], []), (["a1", "a2"], []), ([], ["b0", "b1"]), ([], ["b2"])]
    assert result.passes == 4
    np.testing.assert_allclose(result.matrix, reference(a, b), rtol=0, atol=1e-9)
    assert result.lower is not None and result.n_units == 32 and result.unit == "jackknife group of 32 crops"


def song_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012) HSIC_1 from features, float64, written from the paper's formula."""
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3)))


def debiased_matrix(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """Debiased CKA: HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) over all given crops."""
    flat = lambda f: f.reshape(f.shape[0], -1).astype(np.float64)  # noqa: E731
    return np.array([[song_hsic(flat(x), flat(y)) / math.sqrt(song_hsic(flat(x), flat(x)) * song_hsic(flat(y), flat(y)))
                      for y in ys] for x in xs])


def test_the_jackknife_replicates_are_the_debiased_cka_of_the_crops_left_in():
    """The interval of biased-full is built on the debiased CKA of the same crops (unbiased HSIC_1): each
    delete-a-group replicate equals the debiased CKA recomputed from the features of the other crops, the
    estimate stays the paper's biased CKA, and ``bias`` is its distance from the interval's centre."""
    a, b = layers(40, seed=4)
    metric = FullBatchCKA(["a0", "a1"], ["b0", "b2"], n_groups=5)
    metric.update(a, b)
    result = metric.result(level=0.9)
    from scipy.stats import t as student_t

    xs = [a[k].numpy() for k in ("a0", "a1")]
    ys = [b[k].numpy() for k in ("b0", "b2")]
    reps = []
    for s, e in group_bounds(40, 5):
        keep = np.r_[0:s, e:40]
        reps.append(debiased_matrix([x[keep] for x in xs], [y[keep] for y in ys]))
    reps = np.stack(reps)
    deb = debiased_matrix(xs, ys)
    est = reference({k: a[k] for k in ("a0", "a1")}, {k: b[k] for k in ("b0", "b2")})
    se = np.sqrt(4 / 5 * ((reps - reps.mean(0)) ** 2).sum(0))
    centre = deb - 4 * (reps.mean(0) - deb)
    half = student_t.ppf(0.95, 4) * se
    np.testing.assert_allclose(result.matrix, est, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.interval_estimate, deb, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.lower, centre - half, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.upper, centre + half, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.bias, est - centre, rtol=0, atol=1e-9)
    assert result.interval.startswith("debiased CKA")


def test_deleted_group_unbiased_matches_song_hsic_on_raw_and_centred_grams():
    """HSIC_1 of every pair, on all crops and with each group left out, equals Song et al.'s formula on the
    raw features -- from raw Grams and from the double-centred Grams biased-full keeps."""
    from cka_lab.metrics.cka import deleted_group_unbiased, deleted_group_unbiased_self, double_centre

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 23, 6, generator=g, dtype=torch.float64) + 4.0  # a large common component
    y = torch.randn(2, 23, 9, generator=g, dtype=torch.float64)
    k, l = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
    bounds = group_bounds(23, 4)
    for kk, ll in ((k, l), (double_centre(k), double_centre(l))):
        full, deleted = deleted_group_unbiased(kk, ll, bounds)
        full_self, deleted_self = deleted_group_unbiased_self(kk, bounds)
        want = np.array([[song_hsic(x[i].numpy(), y[j].numpy()) for j in range(2)] for i in range(3)])
        np.testing.assert_allclose(full.numpy(), want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(full_self.numpy(), [song_hsic(x[i].numpy(), x[i].numpy()) for i in range(3)],
                                   rtol=1e-10)
        for gi, (s, e) in enumerate(bounds):
            keep = np.r_[0:s, e:23]
            want = np.array([[song_hsic(x[i].numpy()[keep], y[j].numpy()[keep]) for j in range(2)] for i in range(3)])
            np.testing.assert_allclose(deleted[gi].numpy(), want, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(deleted_self[gi].numpy(),
                                       [song_hsic(x[i].numpy()[keep], x[i].numpy()[keep]) for i in range(3)], rtol=1e-10)


def test_merge_of_two_halves_equals_one_run():
    a, b = layers(64, seed=5)
    whole, first, second = (FullBatchCKA(list(a), list(b)) for _ in range(3))
    for i, (fa, fb) in enumerate(zip(batches(a, 16), batches(b, 16))):
        whole.update(fa, fb)
        (first if i < 2 else second).update(fa, fb)
    merged = first.merge(second)
    assert merged is first and merged.n_samples == 64
    w, m = whole.result(), merged.result()
    np.testing.assert_allclose(m.matrix, w.matrix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.lower, w.lower, rtol=0, atol=1e-12)


def test_reset_forgets_the_kept_features():
    a, b = layers(16, seed=6)
    metric = FullBatchCKA(list(a), list(b))
    metric.update(a, b)
    metric.reset()
    assert metric.n_samples == 0 and metric.kept_bytes() == 0


# ---- unbiased-minibatch through the same entry point -----------------------------------------------


def test_cka_by_passes_unbiased_minibatch_is_one_pass_equal_to_the_accumulator():
    a, b = layers(96, seed=7, dtype=torch.float32)
    calls = []

    def run(group_a, group_b):
        calls.append((group_a, group_b))
        for fa, fb in zip(batches(a, 32), batches(b, 32)):
            yield fa, fb

    result = cka_by_passes(list(a), list(b), run, CKASpec(unit_size=8), n_samples=96)
    direct = MinibatchCKA(list(a), list(b), unit_size=8)
    for fa, fb in zip(batches(a, 32), batches(b, 32)):
        direct.update(fa, fb)
    assert calls == [(list(a), list(b))] and result.passes == 1
    np.testing.assert_allclose(result.matrix, direct.compute().numpy(), rtol=0, atol=0)
    assert result.n_units == 12 and result.unit == "HSIC unit of 8 crops"


def test_to_frame_is_a_long_table_with_provenance():
    a, b = layers(48, seed=8)
    metric = FullBatchCKA(["a0", "a1"], ["b0", "b1", "b2"])
    metric.update(a, b)
    result = metric.result()
    frame = result.to_frame()
    assert list(frame.columns)[:7] == ["layer_a", "layer_b", "cka", "lower", "upper", "estimator", "n_samples"]
    assert len(frame) == 6 and set(frame.estimator) == {"biased-full"} and set(frame.n_samples) == {48}
    row = frame[(frame.layer_a == "a1") & (frame.layer_b == "b2")].iloc[0]
    assert row.cka == result.matrix[1, 2] and row.lower == result.lower[1, 2]
    assert result.provenance()["unit"] == "jackknife group of 2 crops"


def test_a_pass_that_yields_another_number_of_crops_is_an_error():
    a, b = layers(32, seed=9)

    def run(group_a, group_b):
        yield {k: a[k] for k in group_a}, {k: b[k] for k in group_b}

    with pytest.raises(CkaLabError, match="yielded 32 crops but n_samples=40"):
        cka_by_passes(["a1"], ["b0"], run, CKASpec(estimator="biased-full"), n_samples=40, feature_numel=100)


# ---- limits ----------------------------------------------------------------------------------------


def test_features_beyond_max_bytes_are_a_one_line_error_with_the_numbers():
    metric = FullBatchCKA(["x"], ["y"], max_bytes=8_000)
    metric.update({"x": torch.randn(8, 100)}, {"y": torch.randn(8, 50)})  # 4800 bytes
    with pytest.raises(CkaLabError, match=r"16 crops of 2 layers need 9600 bytes, over max_bytes=8000 bytes") as err:
        metric.update({"x": torch.randn(8, 100)}, {"y": torch.randn(8, 50)})
    assert "\n" not in str(err.value) and "cka_by_passes" in str(err.value)


def test_grams_beyond_the_budget_are_a_one_line_error():
    with pytest.raises(CkaLabError, match=r"100 layers need 800\.0 MiB .* over max_bytes=512\.0 MiB; use at most \d+ crops") as err:
        plan_passes([f"a{i}" for i in range(50)], [f"b{i}" for i in range(50)], n_samples=1024,
                    feature_numel=138240, max_bytes=2**29)
    assert "\n" not in str(err.value)


def test_one_layer_beyond_the_budget_is_a_one_line_error():
    """An EDT-T block at 48 px (48*48*60 floats per crop) and 1024 crops: 540 MiB for that layer alone."""
    with pytest.raises(CkaLabError, match=r"layer 'big' \(model B\) at once: 540\.0 MiB of features, over the 408\.0 MiB .* at least 644\.0 MiB") as err:
        plan_passes(["a"], ["big"], n_samples=1024, feature_numel=(10, {"big": 48 * 48 * 60}), max_bytes=2**29)
    assert "\n" not in str(err.value)


def test_edt_t_at_1024_crops_fits_the_default_budget_in_passes():
    """~50 layers per model of 48*48*60 floats (540 MiB each at N = 1024): after 800 MiB of Grams the
    default 4 GiB holds 5 layers per pass, 20 passes of one model each."""
    names_a = [f"a{i}" for i in range(50)]
    names_b = [f"b{i}" for i in range(50)]
    plan = plan_passes(names_a, names_b, n_samples=1024, feature_numel=48 * 48 * 60)
    assert [name for ga, _ in plan for name in ga] == names_a
    assert [name for _, gb in plan for name in gb] == names_b
    assert all(not (ga and gb) for ga, gb in plan)
    assert max(len(ga) + len(gb) for ga, gb in plan) == 5 and len(plan) == 20
