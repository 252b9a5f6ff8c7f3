"""Resolve the hand-captioned dev set of real photos to a pairs CSV (image,caption).

`devset_captions.csv` (next to this script) names 111 photos that ship inside Debian and
PyPI packages (see PHOTOS.md for sources and licences). `apt:` paths are absolute;
`pip:` paths are relative to a site-packages folder. This script finds each file and
writes `image,caption` rows with absolute paths; photos it cannot find are reported
with the command that installs their package.

    python scripts/devset.py --out devset_pairs.csv
    python scripts/devset.py --out devset_pairs.csv --pip-root /tmp/wheels-unpacked

`--pip-root` adds folders where `pip:` paths are looked up besides this Python's
site-packages (an unpacked wheel, or `pip install --no-deps --target DIR imgaug`).
"""

from __future__ import annotations

import argparse
import csv
import site
import sys
from pathlib import Path

CAPTIONS = Path(__file__).with_name("devset_captions.csv")

# How to get each source package; photos from the others need only `pip install -e .`.
INSTALL = {
    "pip:scikit-image": "pip install scikit-image",
    "pip:scikit-learn": "pip install scikit-learn",
    "pip:matplotlib": "pip install matplotlib",
    "pip:imgaug": "pip install --no-deps imgaug",
    "pip:mahotas": "pip install --no-deps mahotas",
    "pip:ultralytics": "pip install --no-deps ultralytics",
}


def install_command(source: str) -> str:
    kind, _, package = source.partition(":")
    if source in INSTALL:
        return INSTALL[source]
    return f"apt-get install -y {package}" if kind == "apt" else f"pip install {package}"


def site_roots(extra: list[str]) -> list[Path]:
    roots = [Path(p) for p in extra]
    roots += [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    roots += [Path(p) for p in site.getsitepackages()]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


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
            pairs.append((str(found.resolve()), row["caption"]))
    return pairs, missing


def load_pairs(pip_roots: list[str] = (), captions: Path = CAPTIONS) -> tuple[list[tuple[str, str]], dict]:
    with open(captions, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return resolve(rows, site_roots(list(pip_roots)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="devset_pairs.csv", help="pairs CSV to write (image,caption)")
    parser.add_argument("--pip-root", action="append", default=[], help="extra folder to look up pip: paths in")
    args = parser.parse_args()
    pairs, missing = load_pairs(args.pip_root)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(pairs)
    print(f"{len(pairs)} photos written to {args.out}")
    for source, paths in missing.items():
        print(f"missing {len(paths)} from {source}: {install_command(source)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
