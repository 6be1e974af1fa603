"""Merge methods: hand-computed values and properties."""

from __future__ import annotations

import pytest
import torch

from evomerge.kernels import float32 as M


def T(*v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_topk_mask_matches_sort_on_random_data():
    g = torch.Generator().manual_seed(0)
    for n, k in [(1000, 1), (1000, 999), (4096, 1234), (77, 30)]:
        x = torch.randn(n, generator=g)
        mask = M.topk_magnitude_mask(x, k)
        assert int(mask.sum()) == k
        kept, dropped = x.abs()[mask], x.abs()[~mask]
        assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_topk_mask_ties_keep_lowest_indices_and_exact_count():
    x = T(1, -3, 2, 3, 3, 0.5)
    assert M.topk_magnitude_mask(x, 2).tolist() == [False, True, False, True, False, False]
    assert M.topk_magnitude_mask(x, 4).tolist() == [False, True, True, True, True, False]
    # values that share the high 16 bits but differ in the low ones
    y = torch.tensor([1.0, 1.0 + 2**-20, 1.0 + 2**-21, 0.0])
    assert M.topk_magnitude_mask(y, 2).tolist() == [False, True, True, False]


def test_linear_hand_computed():
    a, b = T(1, 2), T(3, 6)
    assert torch.allclose(M.linear([a, b], [1, 3]), T(2.5, 5.0))
    assert torch.allclose(M.linear([a, b], [1, 3], normalize=False), T(10, 20))
    assert torch.equal(M.linear([a, b], [1, 0]), a)
    with pytest.raises(ValueError, match="sum to zero"):
        M.linear([a, b], [1, -1])


def test_task_arithmetic_hand_computed():
    base, a, b = T(1, 1), T(2, 0), T(1, 3)
    # τa = (1,-1), τb = (0,2); 0.5τa + 1τb = (0.5, 1.5); λ = 2
    assert torch.allclose(M.task_arithmetic(base, [a, b], [0.5, 1.0], lam=2.0), T(2, 4))
    assert torch.allclose(M.task_arithmetic(base, [a, b], [1.0, 1.0], normalize=True),
                          T(1.5, 1.5))


def test_ties_hand_computed():
    base = T(0, 0, 0, 0)
    a = T(3, -1, 2, 0.1)
    b = T(-1, -2, 1, 0.2)
    # density 1: sign election (3-1=2>0 → +; -3 → -; 3 → +; 0.3 → +)
    # agreeing entries: (3), (-1,-2), (2,1), (0.1,0.2); normalise by agreeing count
    got = M.ties(base, [a, b], [1, 1], [1, 1])
    assert torch.allclose(got, T(3, -1.5, 1.5, 0.15))
    # unnormalised: plain sums of agreeing entries
    got = M.ties(base, [a, b], [1, 1], [1, 1], normalize=False)
    assert torch.allclose(got, T(3, -3, 3, 0.3))
    # density 0.5: a keeps (3, 2); b = (-1, -2, 1.5, .2) keeps (-2, 1.5) → (3, -2, 1.75, 0)
    b = T(-1, -2, 1.5, 0.2)
    got = M.ties(base, [a, b], [1, 1], [0.5, 0.5])
    assert torch.allclose(got, T(3, -2, 1.75, 0))


def test_ties_weight_one_on_one_source_returns_it():
    g = torch.Generator().manual_seed(1)
    base, a, b = (torch.randn(50, generator=g) for _ in range(3))
    assert torch.allclose(M.ties(base, [a, b], [1.0, 0.0], [1.0, 1.0]), a, atol=1e-6)
    assert torch.allclose(M.task_arithmetic(base, [a, b], [1.0, 0.0]), a, atol=1e-6)
    assert torch.allclose(M.linear([a, b], [1.0, 0.0]), a)


def test_ties_zero_sum_elects_plus_and_zero_divisor_is_one():
    base = T(0, 0)
    a, b = T(1, 0), T(-1, 0)
    # entry 0: sum 0 → + elected, only a agrees → 1; entry 1: nothing agrees → divisor 1 → 0
    assert torch.equal(M.ties(base, [a, b], [1, 1], [1, 1]), T(1, 0))


def test_dare_is_reproducible_and_keeps_expected_fraction():
    delta = torch.ones(200_000)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    d1, d2 = M.dare_drop(delta, 0.3, g1), M.dare_drop(delta, 0.3, g2)
    assert torch.equal(d1, d2)
    kept = float((d1 != 0).float().mean())
    assert kept == pytest.approx(0.3, abs=0.005)
    assert torch.allclose(d1[d1 != 0], torch.full_like(d1[d1 != 0], 1 / 0.3))
    # the rescale keeps the expected task vector
    assert float(d1.mean()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(M.dare_drop(delta, 1.0, g1), delta)


def test_dare_ties_density_one_equals_ties():
    g = torch.Generator().manual_seed(3)
    base, a, b = (torch.randn(100, generator=g) for _ in range(3))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert torch.allclose(M.dare_ties(base, [a, b], [0.7, 0.4], [1, 1], gens, normalize=True),
                          M.ties(base, [a, b], [0.7, 0.4], [1, 1]))
    assert torch.allclose(M.dare_linear(base, [a, b], [0.7, 0.4], [1, 1], gens),
                          M.task_arithmetic(base, [a, b], [0.7, 0.4]))


def test_breadcrumbs_drops_outliers_and_small_entries():
    delta = T(10, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    # n=10, density 0.5 → keep 5; gamma 0.1 → drop the top 1 (10); drop the 4 smallest (1..4)
    got = M.magnitude_outlier_prune(delta, 0.5, 0.1)
    assert got.tolist() == [0, 0, 0, 0, 0, 5, 6, 7, 8, 9]
    base = torch.zeros(10)
    assert torch.equal(M.breadcrumbs(base, [delta], [1.0], [0.5], [0.1]), got)
    # gamma 0 is plain magnitude pruning
    assert torch.equal(M.magnitude_outlier_prune(delta, 0.3, 0.0), M.magnitude_prune(delta, 0.3))


def test_slerp_endpoints_midpoint_and_parallel_fallback():
    a, b = T(1, 0), T(0, 1)
    assert torch.allclose(M.slerp(a, b, 0.0), a)
    assert torch.allclose(M.slerp(a, b, 1.0), b)
    mid = M.slerp(a, b, 0.5)
    assert torch.allclose(mid, T(2**-0.5, 2**-0.5), atol=1e-6)  # stays on the unit circle
    assert torch.allclose(M.slerp(a, 2 * a, 0.25), 1.25 * a)  # parallel → linear


def test_chunked_merges_equal_whole_tensor_merges_including_ties_across_chunks():
    g = torch.Generator().manual_seed(11)
    base = torch.randn(1000, generator=g)
    # many exactly tied magnitudes, so the top-k threshold falls inside a run of ties that
    # spans several chunks
    srcs = [base + torch.randint(-3, 4, (1000,), generator=g).float() * 0.25 for _ in range(3)]
    rules_small = [M.magnitude_rule(0.3, 1000) for _ in srcs]
    rules_big = [M.magnitude_rule(0.3, 1000) for _ in srcs]
    small = M.task_vector_merge(base, srcs, [0.5, 0.3, 0.2], rules_small, True, chunk=7)
    big = M.task_vector_merge(base, srcs, [0.5, 0.3, 0.2], rules_big, True, chunk=10_000)
    assert torch.equal(small, big)
    for i, s in enumerate(srcs):
        kept = M.magnitude_prune(s - base, 0.3)
        assert int((kept != 0).sum()) == 300, i
    bf = [s.to(torch.bfloat16) for s in srcs]
    got = M.ties(base.to(torch.bfloat16), bf, [1, 1, 1], [0.5] * 3)
    want = M.ties(base.to(torch.bfloat16).float(), [s.float() for s in bf], [1, 1, 1], [0.5] * 3)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_methods_leave_their_inputs_untouched():
    g = torch.Generator().manual_seed(12)
    base, a, b = (torch.randn(64, generator=g) for _ in range(3))
    copies = [t.clone() for t in (base, a, b)]
    M.ties(base, [a, b], [1, 1], [0.5, 0.5])
    M.dare_ties(base, [a, b], [1, 1], [0.5, 0.5], [torch.Generator().manual_seed(0)] * 2)
    M.breadcrumbs(base, [a, b], [1, 1], [0.5, 0.5], [0.1, 0.1])
    M.slerp(a, b, 0.3)
    assert all(torch.equal(x, y) for x, y in zip((base, a, b), copies, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cheap_finiteness_check_agrees_with_isfinite(dtype):
    from evomerge.merge.tensors import all_finite

    x = torch.randn(1000).to(dtype)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[537] = bad
        assert not all_finite(y)
    if dtype != torch.float32:
        assert all_finite(torch.full((10,), torch.finfo(dtype).max, dtype=dtype))


def test_cached_selections_equal_computed_ones_bit_for_bit():
    """The per-source caches a search keeps (sorted |τ| bits, DARE's draws) give the very
    selections the histogram passes and the generator give, ties at the threshold included."""
    g = torch.Generator().manual_seed(12)
    n = 5000
    base = torch.randn(n, generator=g)
    # quantised task vectors: long runs of equal magnitudes spanning several chunks
    srcs = [base + torch.randint(-3, 4, (n,), generator=g).float() * 0.25 for _ in range(3)]
    ranks = [M.magnitude_ranks(s - base) for s in srcs]
    w = [0.5, 0.3, 0.2]
    for dens in ([0.3, 0.5, 0.71], [0.0, 1.0, 0.999], [0.0002, 0.9, 0.5]):
        assert torch.equal(M.ties(base, srcs, w, dens, chunk=333),
                           M.ties(base, srcs, w, dens, ranks=ranks, chunk=333))
        gammas = [0.05, 0.1, 0.0]
        assert torch.equal(
            M.breadcrumbs(base, srcs, w, dens, gammas, sign_consensus=True, chunk=333),
            M.breadcrumbs(base, srcs, w, dens, gammas, sign_consensus=True,
                          ranks=ranks, chunk=333))
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
        draws = [M.dare_uniforms(n, gen, chunk=333) for gen in gens()]
        for fn in (M.dare_ties, M.dare_linear):
            assert torch.equal(fn(base, srcs, w, dens, gens(), chunk=333),
                               fn(base, srcs, w, dens, gens(), uniforms=draws, chunk=333))
    # the cache really replaces the passes: a wrong cache gives a different selection
    wrong = [torch.zeros_like(b) for b in ranks]
    assert not torch.equal(M.ties(base, srcs, w, [0.3] * 3),
                           M.ties(base, srcs, w, [0.3] * 3, ranks=wrong))
