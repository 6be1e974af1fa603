"""Controllers: M2N2's exact definitions, the Gram-matrix SLERP, CMA-ES budget and bounds,
random and Optuna baselines, and state round trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from evomerge.kernels.float32 import slerp
from evomerge.search.cmaes import CMAES, CMAESSettings
from evomerge.search.m2n2 import M2N2, FlatIndividuals, M2N2Settings, SeedMixtures
from evomerge.search.optuna_search import OptunaSearch
from evomerge.search.protocol import Result
from evomerge.search.random_search import RandomSearch

from .conftest import pickled_modules


def sphere(x: np.ndarray) -> float:
    return -float(np.sum((np.asarray(x) - 0.3) ** 2))


def test_shared_fitness_matches_the_definition():
    s = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=float)
    m = M2N2([np.zeros(2)], M2N2Settings(alpha=1.0))
    f, fit = m.shared_fitness(s)
    # z = (2, 1, 1): F = S / z
    assert np.allclose(f, [[0.5, 0, 1], [0.5, 1, 0], [0, 0, 0]])
    assert np.allclose(fit, [1.5, 1.5, 0])
    m.s.alpha = 0.0
    assert np.allclose(m.shared_fitness(s)[1], [2, 2, 0])
    m.s.alpha, m.s.sample_reward = 2.0, "best"
    sc = np.array([[0.5, 0.2], [0.25, 0.0]])
    f, _ = m.shared_fitness(sc)
    # c = (0.5, 0.2), z = (0.75, 0.2): F = c·S / z²
    assert np.allclose(f, [[0.5 * 0.5 / 0.75**2, 0.2 * 0.2 / 0.04], [0.5 * 0.25 / 0.75**2, 0]])
    # c_j = 1, alpha 1: every sample anyone scores on shares out exactly one unit, however
    # badly all members do on it ('best' pays 1e-4 in all on the second sample)
    m.s.alpha, m.s.sample_reward = 1.0, "one"
    sc = np.array([[0.9, 1e-4], [0.3, 3e-4], [0.0, 0.0]])
    f, _ = m.shared_fitness(sc)
    assert np.allclose(f.sum(axis=0), [1.0, 1.0])
    assert np.allclose(f[:, 1], [0.25, 0.75, 0])
    m.s.sample_reward = "best"
    assert m.shared_fitness(sc)[0][:, 1].sum() == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="sample_reward"):
        M2N2Settings(sample_reward="max")  # type: ignore[arg-type]


def _told(m: M2N2, scores: list[list[float]]) -> None:
    for row in scores:
        (c,) = m.ask()
        m.tell([(c, Result(c.id, float(np.mean(row)), scores=np.array(row, dtype=float)))])


def test_archive_replaces_the_worst_and_drops_a_worst_child():
    rng = np.random.default_rng(0)
    m = M2N2([rng.standard_normal(4) for _ in range(3)], M2N2Settings(archive_size=3))
    _told(m, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    kept = [g.copy() for g in m.genomes]
    # a child that solves nothing is the argmin over P+1 and leaves at once
    _told(m, [[0, 0, 0, 0]])
    assert len(m.genomes) == 3
    assert all(np.array_equal(a, b) for a, b in zip(kept, m.genomes, strict=True))
    # a child solving the only unsolved sample plus one other displaces a member
    _told(m, [[1, 0, 0, 1]])
    assert len(m.genomes) == 3 and m.scores.shape == (3, 4)
    assert m.scores[:, 3].max() == 1.0


def test_attraction_prefers_partners_strong_where_parent_a_is_weak():
    m = M2N2([np.zeros(2)], M2N2Settings(alpha=1.0), seed=1)
    s = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=float)
    f, _ = m.shared_fitness(s)
    g = np.maximum(0, f - f[0]).sum(axis=1)
    assert g[1] == 0 and g[2] > 0  # the clone of A attracts nothing, the complement does
    m.genomes = [np.full(2, float(i)) for i in range(3)]
    m.scores = s
    m.pending_initial = []
    picks = {int(m._child()[1]["parent_b"]) for _ in range(200)}
    assert picks <= {0, 1, 2}
    # with identical members every g is zero: the fallback picks by fitness, never divides by 0
    m.scores = np.ones((3, 4))
    for _ in range(20):
        genome, info = m._child()
        assert np.isfinite(genome).all()


def test_split_point_crossover_uses_w_before_and_one_minus_w_after():
    a, b = np.array([1.0, 0, 0, 0]), np.array([0.0, 1, 0, 0])
    child = FlatIndividuals().crossover(a, b, 0.25, split=2)
    full_w = FlatIndividuals().crossover(a, b, 0.25, split=None)
    full_1mw = FlatIndividuals().crossover(a, b, 0.75, split=None)
    assert np.allclose(child[:2], full_w[:2]) and np.allclose(child[2:], full_1mw[2:])
    expected = slerp(torch.tensor(a), torch.tensor(b), 0.25).numpy()
    assert np.allclose(full_w, expected)


def test_seed_mixture_slerp_equals_slerp_of_materialised_weights():
    rng = np.random.default_rng(3)
    k, groups, sizes = 3, 4, [50, 20, 70, 10]
    seeds = [[rng.standard_normal(n) for n in sizes] for _ in range(k)]
    gram = np.stack([np.array([[seeds[i][g] @ seeds[j][g] for j in range(k)] for i in range(k)])
                     for g in range(groups)])
    mix = SeedMixtures(gram)
    ca, cb = rng.random((groups, k)), rng.random((groups, k))

    def materialise(c: np.ndarray) -> list[np.ndarray]:
        return [sum(c[g, i] * seeds[i][g] for i in range(k)) for g in range(groups)]

    for split in (None, 2):
        child = mix.crossover(ca.ravel(), cb.ravel(), 0.3, split).reshape(groups, k)
        got = materialise(child)
        wa, wb = materialise(ca), materialise(cb)
        for g in range(groups):
            w = 0.3 if split is None or g < split else 0.7
            ref = slerp(torch.tensor(wa[g]), torch.tensor(wb[g]), w).numpy()
            assert np.allclose(got[g], ref, atol=1e-9)


@pytest.mark.parametrize("switch", [{}, {"attraction": False}, {"split_point": False},
                                    {"crossover": False}, {"alpha": 0.0}])
def test_m2n2_ablations_improve_a_toy_problem(switch):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 32)
    m = M2N2([rng.standard_normal(32) * 0.1 for _ in range(8)],
             M2N2Settings(archive_size=8, mutation_sigma=0.05, **switch), seed=0)
    first = None
    for _ in range(400):
        (c,) = m.ask()
        s = ((c.genome > 0).astype(int) == target).astype(float)
        first = s.mean() if first is None else first
        m.tell([(c, Result(c.id, float(s.mean()), scores=s))])
    assert m.scores.mean(axis=1).max() > first + 0.15


def test_cmaes_never_overshoots_the_budget_and_respects_bounds():
    lo, hi = np.zeros(6), np.ones(6)
    c = CMAES(np.full(6, 0.5), lo, hi, budget=50, seed=1)
    assert c.default_popsize == 4 + int(3 * np.log(6))
    n = 0
    while True:
        cands = c.ask()
        if not cands:
            break
        n += len(cands)
        for cand in cands:
            assert (cand.genome >= 0).all() and (cand.genome <= 1).all()
        c.tell([(x, Result(x.id, sphere(x.genome))) for x in cands])
    assert n == 50
    assert sphere(c.best_genome()) > sphere(np.full(6, 0.5)) + 0.1  # x0 scores -0.24


@pytest.mark.parametrize("restarts", ["ipop", "bipop"])
def test_cmaes_restarts_change_the_population(restarts):
    c = CMAES(np.zeros(3), None, None, budget=3000,
              settings=CMAESSettings(sigma0=0.5, restarts=restarts), seed=2)
    pops = set()
    while True:
        cands = c.ask()
        if not cands:
            break
        pops.add(len(c._solutions))
        c.tell([(x, Result(x.id, sphere(x.genome))) for x in cands])
    assert c.restart >= 1 and len(pops) > 1


def test_random_and_optuna_state_round_trips_reproduce_the_next_proposals():
    lo, hi = np.zeros(3), np.ones(3)
    for make in (lambda: RandomSearch(np.full(3, 0.5), lo, hi, seed=4),
                 lambda: OptunaSearch(lo, hi, [("f", "maximize")], "tpe", seed=4),
                 lambda: OptunaSearch(lo, hi, [("f", "maximize"), ("g", "minimize")], "nsga2",
                                      seed=4)):
        c = make()
        for _ in range(12):
            (x,) = c.ask()
            c.tell([(x, Result(x.id, sphere(x.genome),
                               {"f": sphere(x.genome), "g": float(x.genome[0])}))])
        clone = make()
        clone.load_state_dict(pickle.loads(pickle.dumps(c.state_dict())))
        assert np.array_equal(c.ask()[0].genome, clone.ask()[0].genome)


def test_cmaes_proposals_are_reproducible_across_processes():
    """A run killed before its first checkpoint is replayed by a fresh process, so the seed
    alone must fix the proposals (pycma does not seed numpy with a custom sampler)."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom evomerge.search.cmaes import CMAES, CMAESSettings\n"
            "c = CMAES(np.zeros(5), None, None, 100, CMAESSettings(separable=True), seed=3)\n"
            "print(repr(c.ask()[1].genome.tolist()))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert len(outs) == 1


@pytest.mark.parametrize("step_size,expected", [("auto", "CMAAdaptSigmaTPA"),
                                                ("csa", "CMAAdaptSigmaCSA"),
                                                ("tpa", "CMAAdaptSigmaTPA")])
def test_cmaes_step_size_rule_is_selectable_and_survives_a_checkpoint(step_size, expected):
    """pycma picks TPA from 300 dimensions on; `csa` must really replace it, and the choice
    must travel with the checkpoint so a resumed run keeps the same rule."""
    settings = CMAESSettings(sigma0=0.01, separable=True, step_size=step_size)
    c = CMAES(np.zeros(400), None, None, budget=10_000, settings=settings, seed=5)
    for _ in range(3):
        cands = c.ask()
        c.tell([(x, Result(x.id, sphere(x.genome))) for x in cands])
    assert type(c.es.adapt_sigma).__name__ == expected
    clone = CMAES(np.zeros(400), None, None, budget=10_000, settings=settings, seed=5)
    clone.load_state_dict(pickle.loads(pickle.dumps(c.state_dict())))
    assert type(clone.es.adapt_sigma).__name__ == expected
    assert np.array_equal(c.ask()[0].genome, clone.ask()[0].genome)


def _generations(c: CMAES, n: int) -> None:
    for _ in range(n):
        cands = c.ask()
        c.tell([(x, Result(x.id, sphere(x.genome))) for x in cands])


@pytest.mark.parametrize("restarts", ["none", "bipop"])
def test_cmaes_checkpoint_round_trips_between_and_within_generations(restarts):
    """pycma's own pickling is the checkpoint (its documented way to save a strategy): a
    fresh controller loaded from the bytes asks what the original asks, between
    generations and (again, from the generation's start) in the middle of one."""
    settings = CMAESSettings(sigma0=0.3, popsize=6, restarts=restarts)

    def make() -> CMAES:
        return CMAES(np.zeros(5), -np.ones(5), np.ones(5), budget=500, settings=settings,
                     seed=7)

    c = make()
    _generations(c, 4)
    blob = pickle.dumps(c.state_dict())
    clone = make()
    clone.load_state_dict(pickle.loads(blob))
    for _ in range(3):  # the same proposals, told the same, for generations on
        a, b = c.ask(), clone.ask()
        assert [x.id for x in a] == [x.id for x in b]
        assert np.array_equal(np.array([x.genome for x in a]), np.array([x.genome for x in b]))
        for m, cands in ((c, a), (clone, b)):
            m.tell([(x, Result(x.id, sphere(x.genome))) for x in cands])
    half = c.ask(limit=3)  # mid-generation: a checkpoint asks the whole generation again
    c.tell([(x, Result(x.id, sphere(x.genome))) for x in half[:2]])
    mid = make()
    mid.load_state_dict(pickle.loads(pickle.dumps(c.state_dict())))
    again = mid.ask()
    assert [x.id for x in again[:3]] == [x.id for x in half]
    assert np.array_equal(np.array([x.genome for x in again]), np.array(c._solutions))


def test_cmaes_state_from_another_cma_warns_or_names_the_version_to_install(caplog):
    import cma

    from evomerge.search.cmaes import CMAVersionError

    c = CMAES(np.zeros(4), None, None, budget=100, seed=1)
    _generations(c, 2)
    state = c.state_dict()
    assert state["cma_version"] == cma.__version__
    other = {**state, "cma_version": "3.2.2"}
    clone = CMAES(np.zeros(4), None, None, budget=100, seed=1)
    with caplog.at_level("WARNING", logger="evomerge.search.cmaes"):
        clone.load_state_dict(other)  # it loads: a warning, and the same proposals
    assert f"saved with cma 3.2.2 and is resumed with cma {cma.__version__}" in caplog.text
    assert np.array_equal(c.ask()[0].genome, clone.ask()[0].genome)

    # a pickle of a pycma class the installed version no longer has
    class Gone:
        pass

    Gone.__module__, Gone.__qualname__ = "cma.evolution_strategy", "RemovedInThisVersion"
    cma.evolution_strategy.RemovedInThisVersion = Gone
    try:
        blob = pickle.dumps({"es": Gone()})
    finally:
        del cma.evolution_strategy.RemovedInThisVersion
    with pytest.raises(CMAVersionError) as exc:
        clone.load_state_dict({"blob": blob, "cma_version": "3.2.2"})
    message = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert f"saved with cma 3.2.2 and does not load with the installed cma {cma.__version__}" \
        in message
    assert "pip install 'cma==3.2.2'" in message and "start a new run" in message


def test_controller_states_pickle_no_third_party_objects():
    """Checkpoints hold numpy arrays and plain Python, never a library's objects, except
    pycma's strategy inside CMA-ES's blob (versioned: see above)."""
    def modules(state: dict) -> set[str]:
        return pickled_modules(pickle.dumps(state))

    lo, hi = np.zeros(3), np.ones(3)
    controllers = [RandomSearch(np.full(3, 0.5), lo, hi, seed=1),
                   M2N2([np.zeros(3), np.ones(3)], M2N2Settings(archive_size=3)),
                   OptunaSearch(lo, hi, [("f", "maximize")], "tpe", seed=1),
                   CMAES(np.zeros(3), lo, hi, budget=100, seed=1)]
    for c in controllers:
        for _ in range(8):
            cands = c.ask()
            c.tell([(x, Result(x.id, sphere(x.genome), {"f": sphere(x.genome)},
                                scores=np.ones(4))) for x in cands])
        assert modules(c.state_dict()) <= {"numpy"}, type(c).__name__
    assert pickled_modules(controllers[-1].state_dict()["blob"]) <= {"cma", "numpy", "evomerge"}
