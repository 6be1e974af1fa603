"""What a new user meets first: the README's commands are the ones CI runs, every imported
module is declared, and `--help` reads as a help page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_block(heading: str) -> str:
    """The first ```bash block under a README heading."""
    text = (ROOT / "README.md").read_text().split(f"## {heading}\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip()


def test_ci_installs_and_tests_with_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().replace(" --quiet", "")
    install, test = _readme_block("Install"), _readme_block("Test")
    assert "-c constraints.txt" in install  # a new user gets the tested set
    assert install in ci and test in ci


def test_constraints_pin_every_core_dependency():
    pins = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    tomllib = pytest.importorskip("tomllib")

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~;, ]", d, maxsplit=1)[0]).lower()
             for d in deps}
    assert names - pins == set()


def test_no_undeclared_or_transitive_import():
    deptry = Path(sys.executable).parent / "deptry"
    if not deptry.exists():
        pytest.skip("deptry is not installed (it comes with the test extra)")
    out = subprocess.run([str(deptry), str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("command", ["search", "resume", "merge", "export"])
def test_help_shows_flags_as_flags_and_arguments_by_name(command):
    out = subprocess.run([sys.executable, "-m", "evomerge.cli", command, "--help"],
                         capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "100", "TERM": "dumb", "PATH": ""})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "<bool>" not in text  # a flag takes no value
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and re.search(r"\b[A-Z_]{3,}\b", usage.replace("OPTIONS", ""))


def test_the_drift_report_names_each_package_that_moved(tmp_path):
    """What CI prints when the smoke tests fail on the newest versions."""
    from importlib.metadata import version

    pins = tmp_path / "constraints.txt"
    pins.write_text(f"# header\nnumpy==0.0.1\npyyaml=={version('pyyaml')}\n"
                    f"torch=={version('torch').split('+')[0]}\n")
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "drift_report.py"), str(pins)],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"numpy {version('numpy')} (tested: 0.0.1)" in out
    assert "pyyaml" not in out and "torch" not in out and "pip " not in out
    assert f"ray {version('ray')} (not in constraints.txt)" in out


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_each_script_runs_its_help_from_anywhere(script, tmp_path):
    """The scripts share `evomerge.benchmarking` through a plain import, never by putting
    `scripts/` on the import path, so `python scripts/NAME.py` works from any directory."""
    path = ROOT / "scripts" / script
    assert "sys.path" not in path.read_text()
    out = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {script}")
