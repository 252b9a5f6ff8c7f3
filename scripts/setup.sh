#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything retrieval needs, offline-capable.
# Usage: bash scripts/setup.sh [--test]     (--test adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PY" -m venv .venv
fi
# torch 2.14.1 / torchvision 0.29.1 lie on this class of machine's local disk (pip takes them
# from there); elsewhere pip downloads them. open_clip needs torchvision, and PyPI's
# torchvision does not import beside the CPU-only torch 2.13.0 file, hence this pair.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "installing torch and torchvision" >&2
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
fi
echo "installing retrieval$extras" >&2
.venv/bin/pip install -q --disable-pip-version-check -e ".$extras"

# Extra real photos for the demo (CC-BY / CC0 landscapes); optional: the demo runs without them.
if [ ! -d /usr/share/backgrounds ] || ! ls /usr/share/backgrounds/*_by_*.jpg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq lomiri-wallpapers-16.04) >/dev/null 2>&1 \
      || echo "note: could not install lomiri-wallpapers-16.04; the demo uses scikit-image's photos only" >&2
  fi
fi
echo "ready: .venv/bin/retrieval" >&2
