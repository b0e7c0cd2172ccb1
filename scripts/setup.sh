#!/usr/bin/env bash
# One-time setup of a fresh Debian machine: system packages (Fashion-MNIST, ImageMagick for Wand's
# corruptions) and a project virtual environment in .venv with the exact versions of
# requirements-lock.txt (the ranges of requirements.txt, pinned to what the test suite passed with).
# Safe to run again: every step is idempotent, and a changed requirements or lock file reinstalls.
#   VENV=DIR    another environment folder (default .venv)
#   CONSTRAINTS=FILE  pip constraints instead of the lock (scripts/check_floors.sh passes the floors)
#   NO_LOCK=1   resolve requirements.txt afresh instead of the lock (what scripts/refresh_lock.sh does)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
LOCK=${CONSTRAINTS:-requirements-lock.txt}
CONSTRAINTS=(-c "$LOCK")
[ "${NO_LOCK:-0}" = 1 ] && CONSTRAINTS=()

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
ldconfig -p 2>/dev/null | grep -q libMagickWand || need_apt+=(libmagickwand-6.q16-6 imagemagick)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.requirements-installed"
# imagecorruptions is data for us (its code needs the removed pkg_resources): find it, never import it
HAVE='import importlib.util as u, torch, torchvision, timm, wand.image, mmseg; assert u.find_spec("imagecorruptions")'
if ! "$VENV/bin/python" -c "$HAVE" 2>/dev/null \
   || [ requirements.txt -nt "$stamp" ] || [ "$LOCK" -nt "$stamp" ] \
   || [ requirements-nodeps.txt -nt "$stamp" ]; then
  echo "[setup] pip install -r requirements.txt ${CONSTRAINTS[*]} (first time: about 5 GB, a few minutes)"
  # pip's note about the local wheel folder's index is noise; real errors still stop the script
  "${PIP[@]}" -r requirements.txt "${CONSTRAINTS[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  "${PIP[@]}" --no-deps -r requirements-nodeps.txt "${CONSTRAINTS[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  "$VENV/bin/python" -c "$HAVE"
  touch "$stamp"
fi

# The project itself, installed editable (pyproject.toml), so that every entry point (main.py,
# segmentation/train.py, demo/*.py, benchmarks/*.py, `python -m ...`, the absvit-* console scripts)
# imports it from any folder without editing sys.path. --no-deps: the requirements above are its
# dependencies (pyproject.toml declares none, so torch is never resolved again); --no-build-isolation:
# build with this environment's setuptools, with no download. Reinstalled when pyproject.toml changes
# (new modules or console scripts) or when the environment's install is not this checkout.
project_stamp="$VENV/.project-installed"
venv_python="$(cd "$VENV" && pwd)/bin/python"
here="$(pwd -P)"
# where the installed project's main.py is, looked up (not imported) from outside the checkout
INSTALLED='import importlib.util as u, os, sys; s = u.find_spec("main"); sys.exit(not (s and u.find_spec("segmentation") and os.path.dirname(os.path.realpath(s.origin)) == sys.argv[1]))'
if [ pyproject.toml -nt "$project_stamp" ] || ! (cd / && "$venv_python" -P -c "$INSTALLED" "$here"); then
  echo "[setup] pip install --no-deps -e . (the project, editable)"
  if ! "$venv_python" -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null; then
    "${PIP[@]}" "setuptools>=70.1"  # PEP 660 editable builds without the separate wheel package
  fi
  "${PIP[@]}" --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
  (cd / && "$venv_python" -P -c "$INSTALLED" "$here")
  touch "$project_stamp"
fi

# timm's own model test suite (tests/test_models.py of the installed timm's source release), which
# tests/test_timm_suite.py runs on the project's models. It is not part of timm's wheel.
timm_version=$("$VENV/bin/python" -c 'import timm; print(timm.__version__)')
suite="$VENV/timm-tests/test_models.py"
if [ ! -f "$suite" ] || [ "$(cat "$VENV/timm-tests/VERSION" 2>/dev/null)" != "$timm_version" ]; then
  echo "[setup] timm $timm_version's tests/test_models.py (from its source release) -> $suite"
  tmp=$(mktemp -d)
  if "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
       "timm==$timm_version" -d "$tmp" 2>&1 | { grep -v "is ignored: it is neither" || true; } \
     && tar -xzf "$tmp"/timm-*.tar.gz -C "$tmp" "timm-$timm_version/tests/test_models.py"; then
    mkdir -p "$VENV/timm-tests"
    cp "$tmp/timm-$timm_version/tests/test_models.py" "$suite"
    echo "$timm_version" > "$VENV/timm-tests/VERSION"
  else
    echo "[setup] WARNING: could not fetch timm's source release; tests/test_timm_suite.py will skip" >&2
  fi
  rm -rf "$tmp"
fi
echo "[setup] ready: $("$VENV/bin/python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)')"
