"""M2N2: competition for data points, mate selection by attraction, crossover with a moving
split point (docs/design.md §5; "Competition and Attraction Improve Model Fusion").

Steady state: one child per step. The archive holds P members and their per-sample scores
S (P × N). Two individual types share the algorithm: flat parameter vectors, and seed mixtures
(per-group coefficients over K seed models, whose SLERP needs only the seeds' Gram matrices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from evomerge.search.protocol import (
    Candidate,
    Controller,
    ControllerSetup,
    ControllerSpec,
    Result,
    SearchContext,
)


def slerp_coefficients(w: float | np.ndarray, dot: np.ndarray, norm_a: np.ndarray,
                       norm_b: np.ndarray, threshold: float = 0.9995,
                       eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (ca, cb) with slerp(w; a, b) = ca·a + cb·b, from ⟨a,b⟩ and the norms.

    Works elementwise over groups; falls back to linear interpolation when a and b are
    (anti)parallel or one is zero, as the weight-space SLERP does.
    """
    denom = np.maximum(norm_a * norm_b, eps)
    cos = np.clip(dot / denom, -1.0, 1.0)
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), cos.shape)
    linear = (np.abs(cos) > threshold) | (norm_a * norm_b <= eps)
    theta = np.arccos(np.where(linear, 0.0, cos))
    sin = np.where(linear, 1.0, np.sin(theta))
    ca = np.where(linear, 1 - w, np.sin((1 - w) * theta) / sin)
    cb = np.where(linear, w, np.sin(w * theta) / sin)
    return ca, cb


def _scalar_slerp(w: float, dot: float, na: float, nb: float, threshold: float = 0.9995
                  ) -> tuple[float, float]:
    """slerp_coefficients for one pair of vectors, without numpy's per-call overhead."""
    if na * nb <= 1e-12:
        return 1 - w, w
    cos = max(-1.0, min(1.0, dot / (na * nb)))
    if abs(cos) > threshold:
        return 1 - w, w
    theta = math.acos(cos)
    sin = math.sin(theta)
    return math.sin((1 - w) * theta) / sin, math.sin(w * theta) / sin


class FlatIndividuals:
    """Members are raw parameter vectors; the split point moves over single parameters."""

    def split_units(self, genome: np.ndarray) -> int:
        """How many places the crossover split point can fall: one per parameter."""
        return genome.size

    def crossover(self, a: np.ndarray, b: np.ndarray, w: float, split: int | None
                  ) -> np.ndarray:
        """SLERP of two parameter vectors, with weight 1 - w after the split point."""
        dot, na, nb = float(np.dot(a, b)), math.sqrt(np.dot(a, a)), math.sqrt(np.dot(b, b))
        ca, cb = _scalar_slerp(w, dot, na, nb)
        if split is None:
            return (ca * a + cb * b).astype(a.dtype)
        ca2, cb2 = _scalar_slerp(1 - w, dot, na, nb)
        child = np.empty_like(a)
        np.multiply(a[:split], ca, out=child[:split])
        child[:split] += cb * b[:split]
        np.multiply(a[split:], ca2, out=child[split:])
        child[split:] += cb2 * b[split:]
        return child


class SeedMixtures:
    """Members are per-group coefficient vectors over K seeds: θ_g = Σ_k c[g,k]·θ_{k,g}.

    SLERP of two members is again a mixture: its angle needs ⟨θ_A, θ_B⟩_g = c_A,gᵀ G_g c_B,g
    with G_g the seeds' Gram matrix for group g, computed once. The archive costs kilobytes.
    The split point moves over groups (layers / tensors), not single parameters.
    """

    def __init__(self, gram: np.ndarray):
        gram = np.asarray(gram, dtype=np.float64)
        if gram.ndim != 3 or gram.shape[1] != gram.shape[2]:
            raise ValueError(f"gram: expected shape (groups, K, K), got {gram.shape}")
        self.gram = gram
        self.groups, self.k = gram.shape[0], gram.shape[1]

    def split_units(self, genome: np.ndarray) -> int:
        """How many places the crossover split point can fall: one per group."""
        return self.groups

    def crossover(self, a: np.ndarray, b: np.ndarray, w: float, split: int | None
                  ) -> np.ndarray:
        """SLERP of two mixtures per group (angles via the Gram matrices), 1 - w after the split."""
        ca_, cb_ = a.reshape(self.groups, self.k), b.reshape(self.groups, self.k)
        dot = np.einsum("gi,gij,gj->g", ca_, self.gram, cb_)
        na = np.sqrt(np.maximum(np.einsum("gi,gij,gj->g", ca_, self.gram, ca_), 0))
        nb = np.sqrt(np.maximum(np.einsum("gi,gij,gj->g", cb_, self.gram, cb_), 0))
        ww = np.full(self.groups, w)
        if split is not None:
            ww[split:] = 1 - w
        x, y = slerp_coefficients(ww, dot, na, nb)
        return (x[:, None] * ca_ + y[:, None] * cb_).reshape(-1)


@dataclass
class M2N2Settings:
    """M2N2's knobs: archive size, competition (alpha, sample reward), mating and mutation."""
    archive_size: int = 20
    alpha: float = 1.0
    mutation_sigma: float = 0.0
    attraction: bool = True
    split_point: bool = True
    crossover: bool = True
    # c_j, the most reward sample j hands out: 'one' (1: with alpha 1 each sample shares out
    # exactly one unit, by score) or 'best' (max_k S[k,j], the paper's rule for continuous
    # scores, which pays next to nothing on samples no member scores well on)
    sample_reward: Literal["one", "best"] = "one"

    def __post_init__(self) -> None:
        if self.sample_reward not in ("one", "best"):
            raise ValueError(
                f"sample_reward: expected 'one' or 'best', got {self.sample_reward!r}")


class M2N2(Controller):
    """Steady-state M2N2 over flat vectors or seed mixtures."""

    name = "m2n2"

    def __init__(self, initial: list[np.ndarray], settings: M2N2Settings | None = None,
                 individuals: FlatIndividuals | SeedMixtures | None = None, seed: int = 0,
                 scored: list[tuple[np.ndarray, Result]] | None = None):
        """`initial`: members to ask first; `scored`: members already scored (the run's
        baselines), taken into the archive without a trial."""
        if not initial and not scored:
            raise ValueError("m2n2: needs at least one initial member")
        self.s = settings or M2N2Settings()
        self.ind = individuals or FlatIndividuals()
        self.rng = np.random.default_rng(seed)
        self.next_id = 0
        self.pending_initial = [np.asarray(g) for g in initial]
        self._initial = list(self.pending_initial)  # asked again while none has scored
        self.genomes: list[np.ndarray] = []
        self.scores: np.ndarray | None = None  # P × N
        self.fitness_of_best: float = -np.inf
        self.best: np.ndarray | None = None
        if scored:
            self.tell([(Candidate(-1 - i, np.asarray(g)), r) for i, (g, r) in enumerate(scored)])

    # --- the algorithm -------------------------------------------------------------------
    def shared_fitness(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F, fitness): F[k,j] = c_j·S[k,j] / z_j^α with z_j = Σ_k S[k,j] (0 → 1)."""
        z = scores.sum(axis=0)
        z[z == 0] = 1.0
        c = scores.max(axis=0) if self.s.sample_reward == "best" else 1.0
        f = c * scores / z**self.s.alpha if self.s.alpha != 0 else c * scores
        return f, f.sum(axis=1)

    def _pick(self, weights: np.ndarray) -> int:
        total = weights.sum()
        if total <= 0 or not np.isfinite(total):
            return int(self.rng.integers(len(weights)))
        return int(self.rng.choice(len(weights), p=weights / total))

    def _child(self) -> tuple[np.ndarray, dict[str, Any]]:
        assert self.scores is not None
        f, fitness = self.shared_fitness(self.scores)
        a = self._pick(fitness)
        info: dict[str, Any] = {"parent_a": a}
        genome = self.genomes[a]
        if self.s.crossover and len(self.genomes) > 1:
            if self.s.attraction:
                g = np.maximum(0.0, f - f[a]).sum(axis=1)
                b = self._pick(g) if g.sum() > 0 else self._pick(fitness)
            else:
                b = self._pick(fitness)
            w = float(self.rng.uniform())
            split = None
            if self.s.split_point:
                split = int(self.rng.uniform() * self.ind.split_units(genome))
            genome = self.ind.crossover(genome, self.genomes[b], w, split)
            info.update(parent_b=b, w=w, split=split)
        else:
            genome = genome.copy()
        if self.s.mutation_sigma > 0:
            noise = self.rng.standard_normal(genome.shape, dtype=np.float32)
            noise *= self.s.mutation_sigma
            genome += noise.astype(genome.dtype, copy=False)  # genome is a fresh array here
        return genome, info

    # --- ask / tell ------------------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        """One candidate: the next initial member, else a child of two archive members."""
        if self.pending_initial:  # taken when asked: several may be out at once (workers)
            genome = self.pending_initial.pop(0)
            info: dict[str, Any] = {"initial": True}
        elif self.scores is None:  # every initial member failed or is still out: no parents
            genome = self._initial[int(self.rng.integers(len(self._initial)))].copy()
            info = {"initial": True}
        else:
            genome, info = self._child()
        cand = Candidate(self.next_id, genome, info)
        self.next_id += 1
        return [cand]

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        """Add scored members to the archive, dropping the least fit once it is over size."""
        for cand, res in results:
            if res.status != "ok" or res.scores is None:
                continue  # a failed child never enters the archive
            row = np.asarray(res.scores, dtype=np.float64)[None, :]
            if res.fitness > self.fitness_of_best:
                self.fitness_of_best, self.best = res.fitness, cand.genome
            if self.scores is None:
                self.scores = row
            else:
                if row.shape[1] != self.scores.shape[1]:
                    raise ValueError(
                        f"m2n2: result of candidate {cand.id} has {row.shape[1]} per-sample "
                        f"scores, the archive {self.scores.shape[1]}")
                self.scores = np.vstack([self.scores, row])
            self.genomes.append(cand.genome)
            if len(self.genomes) > self.s.archive_size:
                _, fitness = self.shared_fitness(self.scores)
                worst = int(np.argmin(fitness))
                del self.genomes[worst]
                self.scores = np.delete(self.scores, worst, axis=0)

    def best_genome(self) -> np.ndarray | None:
        """The genome with the highest fitness told so far, even if it has left the archive."""
        return self.best

    def state_dict(self) -> dict[str, Any]:
        """The RNG state, archive, pending initial members and best so far."""
        return {
            "rng": self.rng.bit_generator.state,
            "next_id": self.next_id,
            "pending_initial": list(self.pending_initial),
            "genomes": list(self.genomes),
            "scores": self.scores,
            "fitness_of_best": self.fitness_of_best,
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict saved; the settings and individuals come from the constructor."""
        self.rng.bit_generator.state = state["rng"]
        self.next_id = state["next_id"]
        self.pending_initial = list(state["pending_initial"])
        self.genomes = list(state["genomes"])
        self.scores = state["scores"]
        self.fitness_of_best = state["fitness_of_best"]
        self.best = state["best"]


class M2N2Spec(ControllerSpec):
    """`controller: {kind: m2n2}`: the archive, competition and mate-selection settings."""

    kind: Literal["m2n2"]
    archive_size: int = Field(20, ge=2)
    alpha: float = Field(1.0, ge=0)
    mutation_sigma: float = Field(0.0, ge=0)
    attraction: bool = True
    split_point: bool = True
    crossover: bool = True
    sample_reward: Literal["one", "best"] = "one"

    @property
    def population(self) -> int:
        """M2N2 starts from a full archive."""
        return self.archive_size

    def build(self, setup: ControllerSetup, ctx: SearchContext) -> M2N2:
        """M2N2 over the task's initial members (flat vectors or seed mixtures).

        Starts scored on the search split with per-sample scores (the run's baselines) enter
        the archive as they are: asking them again would spend a trial each on a cached
        answer. With two or more of them the archive starts there and children fill it; the
        task's random fill members are asked only when fewer exist (each of those is a full
        evaluation: an archive member must be scored on every sample)."""
        settings = M2N2Settings(archive_size=self.archive_size, alpha=self.alpha,
                                mutation_sigma=self.mutation_sigma,
                                attraction=self.attraction, split_point=self.split_point,
                                crossover=self.crossover, sample_reward=self.sample_reward)
        scored = [(g, r) for g, r in zip(setup.starts, setup.start_results, strict=False)
                  if r.status == "ok" and r.scores is not None]
        if len(scored) >= 2 and len(scored) == len(setup.starts):
            return M2N2([], settings, individuals=setup.individuals, seed=ctx.seed,
                        scored=scored)
        return M2N2(setup.initial_with_starts(), settings, individuals=setup.individuals,
                    seed=ctx.seed)
