"""Pareto archive: the non-dominated set of evaluated trials, its hypervolume, and front export.

Rules (stated once, relied on by the run loop and the report):

* Objectives carry a direction. Internally every value is mapped to minimisation
  (``maximize`` values are negated) so dominance and hypervolume use one convention.
* ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better in one.
* A new point that is *weakly* dominated by a member (the member is at least as good in every
  objective) is rejected. In particular an exact duplicate of a
  member's objective vector is rejected: **the first trial with a given vector is kept**, later
  ones never enter. Members dominated by a newcomer leave the front.
* Objective values must be finite; a missing, NaN or infinite objective raises ``ValueError``
  naming the objective. Keys in ``values`` that are not objectives are ignored (put extra
  information in ``payload``).
* Hypervolume is computed with ``moocore.hypervolume`` on the minimisation-transformed front
  against the stated reference point, transformed the same way. Points that do not strictly
  dominate the reference point contribute nothing. There is no implicit reference point: without
  one, ``hypervolume()`` raises and ``history`` stays empty.
* ``history`` gets one ``(n_added, hypervolume)`` entry per ``add`` call (accepted or not). The
  hypervolume is recomputed only when the front changed; in 2-D/3-D moocore is O(n log n), so
  this is cheap for fronts of up to a few hundred points. Because newcomers only displace points
  they dominate, the recorded hypervolume never decreases.
* ``payload`` is stored as a deep copy and must be JSON-serialisable for ``to_dict`` and
  ``export_front``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import moocore
import numpy as np

from evomerge.atomic import write_text_atomic

Direction = Literal["maximize", "minimize"]
_DIRECTIONS = ("maximize", "minimize")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Objective:
    """One objective and whether larger or smaller values are better."""

    name: str
    direction: Direction = "maximize"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("objective name must be non-empty")
        if self.direction not in _DIRECTIONS:
            raise ValueError(
                f"objective {self.name!r}: direction must be one of {_DIRECTIONS}, "
                f"got {self.direction!r}"
            )

    @property
    def sign(self) -> float:
        """Factor that maps a raw value to minimisation (``-1`` for maximize, ``+1`` else)."""
        return -1.0 if self.direction == "maximize" else 1.0

    def to_min(self, value: float) -> float:
        """Raw value -> minimisation value (negated when maximising)."""
        return self.sign * float(value)

    def from_min(self, value: float) -> float:
        """Inverse of :meth:`to_min`."""
        return self.sign * float(value)

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form, as the archive's saved file stores each objective."""
        return {"name": self.name, "direction": self.direction}


def to_min_vector(objectives: Sequence[Objective], values: Mapping[str, Any]) -> np.ndarray:
    """Validated minimisation vector of ``values`` in objective order.

    Raises ``ValueError`` naming the objective when it is missing, not a number, NaN or infinite,
    because a silent NaN would make every dominance comparison false and corrupt the front.
    """
    out = np.empty(len(objectives), dtype=float)
    for i, obj in enumerate(objectives):
        if obj.name not in values:
            raise ValueError(f"objective {obj.name!r} is missing from values {dict(values)!r}")
        raw = values[obj.name]
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"objective {obj.name!r} is not a number: {raw!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"objective {obj.name!r} is not finite: {v!r}")
        out[i] = obj.to_min(v)
    return out


@dataclass(frozen=True)
class ArchiveEntry:
    """A front member: the trial, its objective values (raw directions), and its payload."""

    trial_id: int
    values: dict[str, float]
    payload: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of this member (payload deep-copied), for checkpoints and export."""
        return {
            "trial_id": self.trial_id,
            "values": dict(self.values),
            "payload": copy.deepcopy(self.payload),
        }


class ParetoArchive:
    """Non-dominated set of trials with hypervolume tracking (see module docstring for rules)."""

    def __init__(
        self,
        objectives: Sequence[Objective],
        reference_point: Mapping[str, float] | None = None,
    ) -> None:
        objectives = list(objectives)
        if not objectives:
            raise ValueError("at least one objective is required")
        names = [o.name for o in objectives]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate objective names: {dup}")
        self._objectives: tuple[Objective, ...] = tuple(objectives)
        self._ref_min: np.ndarray | None = None
        self._reference_point: dict[str, float] | None = None
        if reference_point is not None:
            try:
                self._ref_min = to_min_vector(self._objectives, reference_point)
            except ValueError as e:
                raise ValueError(f"reference point: {e}") from None
            self._reference_point = {o.name: float(reference_point[o.name]) for o in objectives}
        self._entries: list[ArchiveEntry] = []
        self._points = np.empty((0, len(objectives)), dtype=float)  # minimisation, row per entry
        self._n_added = 0
        self._hv: float | None = 0.0 if self._ref_min is not None else None
        self.history: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ properties
    @property
    def objectives(self) -> tuple[Objective, ...]:
        """The objectives that rank the front, in the order vectors use."""
        return self._objectives

    @property
    def reference_point(self) -> dict[str, float] | None:
        """A copy of the hypervolume reference point in raw values; None when not set."""
        return None if self._reference_point is None else dict(self._reference_point)

    @property
    def n_added(self) -> int:
        """Number of ``add`` calls so far (accepted or not)."""
        return self._n_added

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ core
    def dominated(self, values: Mapping[str, float]) -> bool:
        """Whether a member weakly dominates this point (`add` would reject it)."""
        pts = self._points
        point = to_min_vector(self._objectives, values)
        return bool(len(pts) and np.any(np.all(pts <= point, axis=1)))

    def add(
        self,
        trial_id: int,
        values: Mapping[str, float],
        payload: Mapping[str, Any] | None = None,
    ) -> bool:
        """Offer a trial; return True if it enters the front.

        Members it dominates leave. A point weakly dominated by a member (including an exact
        duplicate of a member's vector) is rejected, so the earliest trial of a vector stays.
        """
        return self._add_point(int(trial_id), to_min_vector(self._objectives, values), payload)

    def add_many(self, trials: Sequence[tuple[int, Mapping[str, float]]],
                 block: int = 2048) -> None:
        """`add` for many trials in order, to the same front and history, fast: the points
        that the front before their block already weakly dominates (nearly all of a long
        run's) are rejected by one array comparison per block rather than one by one. A
        point the front weakly dominates at the block's start is weakly dominated at its
        own turn too (a member that left was dominated by the one that replaced it)."""
        signs = np.array([o.sign for o in self._objectives])
        for start in range(0, len(trials), block):
            chunk = trials[start:start + block]
            try:
                points = np.array([[float(v[o.name]) for o in self._objectives]
                                   for _, v in chunk], dtype=float) * signs
                if not np.isfinite(points).all():
                    raise ValueError
            except (KeyError, TypeError, ValueError):  # named by the one-at-a-time check
                points = np.array([to_min_vector(self._objectives, v) for _, v in chunk])
            front = self._points
            covered = (front[None, :, :] <= points[:, None, :]).all(axis=2).any(axis=1) \
                if len(front) else np.zeros(len(chunk), dtype=bool)
            for (trial_id, _), point, skip in zip(chunk, points, covered, strict=True):
                if not skip:
                    self._add_point(int(trial_id), point, None)
                    continue
                self._n_added += 1
                if self._hv is not None:
                    self.history.append((self._n_added, self._hv))

    def _add_point(self, trial_id: int, point: np.ndarray,
                   payload: Mapping[str, Any] | None) -> bool:
        if any(e.trial_id == trial_id for e in self._entries):
            raise ValueError(f"trial_id {trial_id} is already on the front")
        self._n_added += 1
        accepted = self._insert(trial_id, point, payload)
        if self._ref_min is not None:
            if accepted:
                self._hv = self._compute_hv()
            assert self._hv is not None
            self.history.append((self._n_added, self._hv))
        return accepted

    def _insert(
        self, trial_id: int, point: np.ndarray, payload: Mapping[str, Any] | None
    ) -> bool:
        pts = self._points
        if len(pts) and bool(np.any(np.all(pts <= point, axis=1))):
            return False
        keep = ~np.all(point <= pts, axis=1) if len(pts) else np.ones(0, dtype=bool)
        self._entries = [e for e, k in zip(self._entries, keep, strict=True) if k]
        self._points = np.vstack([pts[keep], point[None, :]])
        values = {o.name: o.from_min(v) for o, v in zip(self._objectives, point, strict=True)}
        stored = None if payload is None else copy.deepcopy(dict(payload))
        self._entries.append(ArchiveEntry(trial_id, values, stored))
        return True

    def dominates(self, a: Mapping[str, float], b: Mapping[str, float]) -> bool:
        """True if ``a`` Pareto-dominates ``b`` under this archive's objectives."""
        pa = to_min_vector(self._objectives, a)
        pb = to_min_vector(self._objectives, b)
        return bool(np.all(pa <= pb) and np.any(pa < pb))

    def front(self) -> list[ArchiveEntry]:
        """Front members sorted best-first on the first objective (ties: next objectives, id)."""
        order = sorted(
            range(len(self._entries)),
            key=lambda i: (*self._points[i].tolist(), self._entries[i].trial_id),
        )
        return [
            ArchiveEntry(
                self._entries[i].trial_id,
                dict(self._entries[i].values),
                copy.deepcopy(self._entries[i].payload),
            )
            for i in order
        ]

    def front_points(self, minimization: bool = False) -> np.ndarray:
        """Front as an (n, m) array in ``front()`` order; raw directions unless ``minimization``."""
        entries = self.front()
        if not entries:
            return np.empty((0, len(self._objectives)), dtype=float)
        pts = np.array([[e.values[o.name] for o in self._objectives] for e in entries], float)
        if minimization:
            pts = pts * np.array([o.sign for o in self._objectives])
        return pts

    # ------------------------------------------------------------------ hypervolume
    def _compute_hv(self) -> float:
        assert self._ref_min is not None
        pts = self._points
        # Only points strictly better than the reference in every objective span volume; moocore
        # already ignores the others, filtering keeps that explicit and avoids empty-array quirks.
        pts = pts[np.all(pts < self._ref_min, axis=1)]
        if len(pts) == 0:
            return 0.0
        return float(moocore.hypervolume(pts, ref=self._ref_min))

    def hypervolume(self) -> float:
        """Hypervolume of the front w.r.t. the stated reference point (raises if none was given)."""
        if self._ref_min is None:
            raise ValueError(
                "hypervolume needs an explicit reference point: pass reference_point={name: value}"
                " to ParetoArchive (there is no implicit default, so numbers stay comparable)"
            )
        assert self._hv is not None
        return self._hv

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints (front in insertion order, history, counters)."""
        return {
            "version": _FORMAT_VERSION,
            "objectives": [o.to_dict() for o in self._objectives],
            "reference_point": self.reference_point,
            "n_added": self._n_added,
            "front": [e.to_dict() for e in self._entries],
            "history": [[n, hv] for n, hv in self.history],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ParetoArchive:
        """Rebuild an archive from :meth:`to_dict` output."""
        version = state.get("version")
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported archive format version {version!r}")
        objectives = [Objective(o["name"], o["direction"]) for o in state["objectives"]]
        archive = cls(objectives, state.get("reference_point"))
        for e in state["front"]:
            point = to_min_vector(archive._objectives, e["values"])
            if not archive._insert(int(e["trial_id"]), point, e.get("payload")):
                raise ValueError(
                    f"checkpointed front is not non-dominated at trial {e['trial_id']}"
                )
        archive._n_added = int(state["n_added"])
        archive.history = [(int(n), float(hv)) for n, hv in state.get("history", [])]
        if archive._ref_min is not None:
            archive._hv = archive._compute_hv()
        return archive

    def export_front(self, path: str | Path) -> None:
        """Write the front (plus objectives, reference point, hypervolume) as JSON, atomically."""
        doc: dict[str, Any] = {
            "objectives": [o.to_dict() for o in self._objectives],
            "reference_point": self.reference_point,
            "hypervolume": self._hv,
            "n_added": self._n_added,
            "front": [e.to_dict() for e in self.front()],
        }
        # allow_nan=False: refuse to write non-standard JSON (e.g. NaN hidden in a payload).
        write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
