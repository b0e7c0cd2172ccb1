#!/usr/bin/env bash
# One-time setup of a fresh Debian machine: system packages (Fashion-MNIST, ImageMagick for
# Wand's corruptions) and a project virtual environment in .venv with requirements.txt.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
ldconfig -p 2>/dev/null | grep -q libMagickWand || need_apt+=(libmagickwand-6.q16-6 imagemagick)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, timm, wand.image" 2>/dev/null \
   || [ requirements.txt -nt .venv/.requirements-installed ]; then
  echo "[setup] pip install -r requirements.txt (first time: about 5 GB, a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import torch, torchvision, timm" 
  touch .venv/.requirements-installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)')"
