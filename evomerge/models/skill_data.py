"""The skill zoo's data: its word-level vocabulary and a seeded generator of items per skill.

Both the training in `skill_zoo` and the lm-eval task files in `skill_tasks` draw from here.

Skills (prompt → answer, every token a word):
- ``add``:  "ADD 3 5 ="        → "0 8"        (sum of two digits, tens and ones)
- ``rev``:  "REV a c d b ="    → "b d c a"    (four letters reversed)
- ``sort``: "SORT 7 2 5 ="     → "2 5 7"      (three digits in increasing order)
- ``tr``:   "TR 3 7 1 ="       → "three seven one"   (digits into language B's words)
- ``sort_b``: SORT in language B ("SORT seven two five =" → "two five seven")
- ``add_b``: ADD in language B ("ADD three five =" → "zero eight"): the cross-domain target,
  in the spirit of the evo-merge paper's Japanese math; no expert is trained on it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
MARKERS = ["ADD", "REV", "SORT", "TR", "="]
DIGITS_A = [str(i) for i in range(10)]
DIGITS_B = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = list("abcdefgh")
VOCAB = SPECIALS + MARKERS + DIGITS_A + DIGITS_B + LETTERS
SKILLS = ("add", "rev", "sort", "tr", "sort_b", "add_b")


def _add(rng: np.random.Generator, digits: list[str]) -> tuple[list[str], list[str]]:
    x, y = (int(v) for v in rng.integers(0, 10, 2))
    s = x + y
    return ["ADD", digits[x], digits[y], "="], [digits[s // 10], digits[s % 10]]


def _sort(rng: np.random.Generator, digits: list[str]) -> tuple[list[str], list[str]]:
    xs = [int(v) for v in rng.integers(0, 10, 3)]
    return ["SORT", *(digits[v] for v in xs), "="], [digits[v] for v in sorted(xs)]


def _rev(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    xs = [LETTERS[int(v)] for v in rng.integers(0, len(LETTERS), 4)]
    return ["REV", *xs, "="], xs[::-1]


def _tr(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    xs = [int(v) for v in rng.integers(0, 10, 3)]
    return ["TR", *(DIGITS_A[v] for v in xs), "="], [DIGITS_B[v] for v in xs]


MAKERS: dict[str, Callable[[np.random.Generator], tuple[list[str], list[str]]]] = {
    "add": lambda r: _add(r, DIGITS_A),
    "rev": _rev,
    "sort": lambda r: _sort(r, DIGITS_A),
    "tr": _tr,
    "sort_b": lambda r: _sort(r, DIGITS_B),
    "add_b": lambda r: _add(r, DIGITS_B),
}


def items(skill: str, n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """`n` (prompt, answer) token lists of `skill`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [MAKERS[skill](rng) for _ in range(n)]
