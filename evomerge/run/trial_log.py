"""The trial log, `trials.jsonl` (docs/design.md §7): one JSON object per finished
evaluation, appended and never rewritten. This module is its codec: the line written for a
trial, the compact per-sample scores, reading the file back (a torn last line tolerated) and
the Pareto archive rebuilt from its lines, which is how report, export and resume all read a
run's front."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.archive import Objective, ParetoArchive
from evomerge.run.errors import RunError
from evomerge.search.protocol import Candidate, Result
from evomerge.space.base import genome_digest

# what every line of trials.jsonl carries
TRIAL_KEYS = frozenset({"trial", "id", "status", "fitness", "objectives", "seconds"})


# --- compact per-sample scores -------------------------------------------------------------
# 0/1 scores are logged as bits; any others as zlib-packed float32, lossless: quantising
# continuous scores to 8 or 16 bits measurably changed what M2N2 found (digits, p_correct:
# runs stalled at 80-83% that reach 86-91% at full precision). The controller is told
# `as_logged(scores)`, so a run replayed from its log makes exactly the live run's decisions.
def _is_binary(s: np.ndarray) -> bool:
    return bool(np.all((s == 0) | (s == 1)))


def as_logged(scores: np.ndarray) -> np.ndarray:
    """The per-sample scores exactly as `decode_scores(encode_scores(scores))` returns them."""
    return np.asarray(scores, dtype=np.float32)


def encode_scores(scores: np.ndarray) -> dict[str, Any]:
    """Per-sample scores as a log field: packed bits when all are 0/1, else zlib'd float32."""
    s = as_logged(scores)
    if _is_binary(s):
        return {"n": int(s.size), "bits": base64.b64encode(np.packbits(s.astype(bool))).decode()}
    raw = zlib.compress(s.astype("<f4").tobytes(), 1)
    return {"n": int(s.size), "f32z": base64.b64encode(raw).decode()}


def decode_scores(data: dict[str, Any]) -> np.ndarray:
    """The scores a log field holds (float32), whichever encoding wrote it."""
    if "bits" in data:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data["bits"]), dtype=np.uint8))
        return bits[: data["n"]].astype(np.float32)
    if "f32z" in data:
        raw = zlib.decompress(base64.b64decode(data["f32z"]))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    # logs written before 2026-11-22 kept continuous scores as float16
    return np.frombuffer(base64.b64decode(data["f16"]), dtype="<f2").astype(np.float32)


# --- lines ---------------------------------------------------------------------------------
def trial_line(trial: int, cand: Candidate, res: Result, fields: dict[str, Any]
               ) -> dict[str, Any]:
    """The log line of a finished trial: its number, the candidate's id, the result and the
    task's fields (genome or digest, recipe digest, cache key, rungs, worker, ...)."""
    line: dict[str, Any] = {"trial": trial, "id": cand.id, "status": res.status,
                            "fitness": res.fitness if np.isfinite(res.fitness) else None,
                            "objectives": res.objectives, "seconds": round(res.seconds, 6)}
    if res.scores is not None:
        line["scores"] = encode_scores(res.scores)
    line.update(fields)
    if res.validation is not None:
        line["validation"] = res.validation
    if res.heldout is not None:
        line["heldout"] = res.heldout
    if res.error:
        line["error"] = res.error
    return line


def result_from_line(line: dict[str, Any]) -> Result:
    """The `Result` a logged trial told its controller (replay tells it again)."""
    fitness = line["fitness"] if line["fitness"] is not None else -np.inf
    scores = decode_scores(line["scores"]) if "scores" in line else None
    return Result(line["id"], fitness, line["objectives"], scores, line["status"],
                  line.get("heldout"), line["seconds"], line.get("error"),
                  line.get("fidelity", 1.0), line.get("validation"))


def item_scores(field: dict[str, Any]) -> dict[str, np.ndarray]:
    """A rescored split's per-item scores (`heldout_items`): `evaluator:metric` → scores."""
    flat = decode_scores(field)
    out, at = {}, 0
    for name, n in field["parts"]:
        out[name] = flat[at: at + n]
        at += n
    return out


def is_full(line: dict[str, Any]) -> bool:
    """Scored on the whole search split (multi-fidelity runs also log lower rungs)."""
    return line.get("fidelity", 1.0) >= 1


def same_genome(line: dict[str, Any], genome: np.ndarray) -> bool:
    """A replayed line belongs to this genome (lines keep the genome or its digest)."""
    if "genome" in line:
        return np.array_equal(np.asarray(line["genome"], dtype=np.float64),
                              np.asarray(genome, dtype=np.float64))
    if "genome_digest" in line:
        return line["genome_digest"] == genome_digest(genome)
    return True


def archive_from_lines(lines: list[dict[str, Any]], objectives: list[tuple[str, str]],
                       reference: dict[str, float]) -> ParetoArchive:
    """The Pareto archive of the successful full-fidelity trials among `lines`, added in log
    order (so its hypervolume history is the run's)."""
    archive = ParetoArchive([Objective(n, d) for n, d in objectives], reference)
    archive.add_many([(line["trial"], line["objectives"]) for line in lines
                      if line["status"] == "ok" and is_full(line)])
    return archive


def best_line(lines: list[dict[str, Any]], objectives: list[tuple[str, str]],
              among: str = "all") -> dict[str, Any] | None:
    """The run's best trial by its first objective: chosen on the validation split among the
    trials scored there, or, in runs without one, on the search split among the full-fidelity
    ones (docs/design.md §7.5). `among`: "all", "searched" or "baselines"."""
    name, direction = objectives[0]
    sign = 1.0 if direction == "maximize" else -1.0
    ok = [x for x in lines if x["status"] == "ok" and is_full(x)
          and (among == "all" or ("baseline" in x) == (among == "baselines"))]
    split = "validation" if any("validation" in x for x in lines) else "objectives"
    pool = [x for x in ok if split in x]
    return max(pool, key=lambda x: (sign * x[split][name], -x["trial"]), default=None)


# --- the file ------------------------------------------------------------------------------
def read_trial_log(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Trial lines. A torn last line (killed mid-write, or being written right now) is
    ignored, and cut off the file with `repair` (only the process holding the run's lock
    may). Any other line that is not a trial record is an error naming its line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end != len(raw) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
    lines = []
    for number, text in enumerate(raw[:end].splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict) or not TRIAL_KEYS <= set(line):
                raise ValueError(f"not a trial record (a trial line has the keys "
                                 f"{sorted(TRIAL_KEYS)})")
        except ValueError as exc:
            raise RunError(
                f"{path}: line {number} is not a trial record ({exc}); the "
                "log is written only by evomerge, one JSON object per line, so it was "
                "edited or corrupted: restore it, or delete that line to evaluate that "
                "trial again on resume") from None
        lines.append(line)
    return lines


__all__ = ["TRIAL_KEYS", "archive_from_lines", "as_logged", "best_line", "decode_scores",
           "encode_scores", "is_full", "item_scores", "read_trial_log", "result_from_line",
           "same_genome", "trial_line"]
