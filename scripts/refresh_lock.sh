#!/usr/bin/env bash
# Re-resolve requirements.txt (and requirements-nodeps.txt) to today's newest versions in a fresh
# environment, run the test suite there, and only if it passes write those versions to
# requirements-lock.txt. Then commit the lock; the next `bash scripts/setup.sh` installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-lock-refresh
rm -rf "$VENV"
VENV=$VENV NO_LOCK=1 bash scripts/setup.sh
"$VENV/bin/python" -m pytest -n 2 -q
header=$(sed -n '/^#/p' requirements-lock.txt)
{ echo "$header"; "$VENV/bin/pip" freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+) @ .*/\1/' \
    | while read -r line; do
        case "$line" in *==*) echo "$line" ;;
          *) echo "$line==$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$line'))")" ;;
        esac
      done | LC_ALL=C sort -f; } > requirements-lock.txt.new
mv requirements-lock.txt.new requirements-lock.txt
echo "[refresh_lock] requirements-lock.txt rewritten; review with: git diff requirements-lock.txt"
