"""lm-eval task files for the skill zoo: per skill a search split and a held-out test split.

Each task is a `loglikelihood` task: lm-eval scores the answer as a continuation of the prompt
and reports `acc` (exact match: every answer token is the model's greedy choice) and, per
document, the answer's log-likelihood, from which the evaluator derives `p_answer` (the
probability of the whole answer), the continuous signal M2N2's members compete on. The YAMLs
name their data files by absolute path (lm-eval resolves `data_files` against the current
directory).
"""

from __future__ import annotations

from pathlib import Path

from evomerge.models.skill_data import SKILLS, items
from evomerge.models.tiny_tasks import write_jsonl_task

SPLITS = {"search": 1_000, "test": 2_000}  # seed offsets: the splits draw different items


def write_skill_tasks(out: str | Path, n: int = 1500, final_dir: str | Path | None = None
                      ) -> Path:
    """`<skill>_<split>.jsonl` + `.yaml` for every skill and split, `n` items each. The YAMLs
    point at `final_dir` (default `out`): where the files will live once in place."""
    out = Path(out)
    where = Path(final_dir or out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for k, skill in enumerate(SKILLS):
        for split, offset in SPLITS.items():
            name = f"{skill}_{split}"
            rows = [{"q": " ".join(q), "a": " ".join(a)}
                    for q, a in items(skill, n, offset + k)]
            write_jsonl_task(out, where, name, rows,
                             "output_type: loglikelihood\n"
                             'doc_to_text: "{{q}}"\n'
                             # lm-eval puts no delimiter before a loglikelihood target
                             'doc_to_target: " {{a}}"\n')
    return out
