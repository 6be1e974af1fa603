"""Name the installed packages whose versions differ from constraints.txt.

CI runs the smoke tests in a venv with the newest versions pyproject.toml allows; when they
fail, this says which packages moved, so the breaking release is found before a user is."""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(constraints: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by canonical name."""
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_canonical(name.split("[")[0])] = version.strip()
    return out


def installed() -> dict[str, str]:
    return {_canonical(d.metadata["Name"]): d.version for d in distributions()
            if d.metadata["Name"]}


# the installer itself, and this project: never pinned
UNPINNED = {"evomerge", "pip", "setuptools", "wheel"}


def _public(version: str) -> str:
    """A version without its local label (torch's `2.13.0+cpu` is the tested `2.13.0`)."""
    return version.split("+", 1)[0]


def differences(constraints: Path) -> list[str]:
    tested, here = pinned(constraints), installed()
    rows = []
    for name in sorted(here):
        if name in UNPINNED:
            continue
        if name not in tested:
            rows.append(f"{name} {here[name]} (not in {constraints.name})")
        elif _public(tested[name]) != _public(here[name]):
            rows.append(f"{name} {here[name]} (tested: {tested[name]})")
    return rows


def main() -> int:
    constraints = Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
    rows = differences(constraints)
    print(f"{len(rows)} installed package(s) differ from {constraints}:")
    for row in rows:
        print(f"  {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
