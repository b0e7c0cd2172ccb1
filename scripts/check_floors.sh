#!/usr/bin/env bash
# Check that the floors of requirements.txt really work: install every ">=X" of requirements*.txt as
# "==X" (pip resolves the rest) into .venv-floors with scripts/setup.sh and run the test suite there.
# Not part of CI (a second 5 GB environment); run it when a floor changes. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
floors=$(mktemp --suffix=.txt)
trap 'rm -f "$floors"' EXIT
sed -nE 's/^([A-Za-z0-9_.-]+)>=([0-9][^ #]*).*/\1==\2/p' requirements.txt requirements-nodeps.txt > "$floors"
echo "[floors] $(tr '\n' ' ' < "$floors")"
VENV=.venv-floors CONSTRAINTS="$floors" bash scripts/setup.sh
.venv-floors/bin/python -m pytest -n 2 -q "$@"
