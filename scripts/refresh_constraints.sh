#!/usr/bin/env bash
# Re-pin constraints.txt to the newest versions pyproject.toml allows (every extra), in a
# fresh venv; then run `bash .ci/run` and commit constraints.txt only if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -e ".[test,mergekit,smollm2]"
{
    echo "# The versions the test suite last passed with (scripts/refresh_constraints.sh)."
    echo "# Install with: pip install -e \".[test]\" -c constraints.txt"
    "$venv/bin/pip" freeze --exclude-editable | grep -v "^evomerge"
} > constraints.txt
rm -rf "$(dirname "$venv")"
echo "constraints.txt: $(grep -c '==' constraints.txt) pins; now run: bash .ci/run"
