"""Calibrate `weak_below`: the best score under which the page says no result is a good match.

The dev set's photos (v2, those installed here) are indexed with the `default` aligner, and
each hand-written caption is searched twice:

- **present**: over every photo, its own among them: the best score when a good match exists;
- **absent**: over every photo but its own: the best score when the photo the words describe
  is not in the set. Many dev-set photos are alike (lakes, meadows, sunsets), so the nearest
  other photo is often a fair match for the words: a pessimistic, high estimate;
- **foreign**: the captions of the photos that do not come from scikit-image, over the
  scikit-image photos alone (an astronaut, a cat, coffee, coins, the moon...): words whose
  subject a small set lacks, as "a cat" in a folder of landscapes.

For each candidate threshold the report gives the share of present queries it would wrongly
call weak and the share of absent ones it would rightly call weak. The shipped value
(`retrieval/search/relevance.py`) and how it was chosen are in docs/server.md.

    python -m benchmarks.weak_match --out bench-out/weak-match.json
    python -m benchmarks.weak_match --pip-root /tmp/devset-pip
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.devset import PIP_ROOT, report_missing
from retrieval.evaluation import devset

THRESHOLDS = [round(t, 2) for t in np.arange(0.20, 0.61, 0.025)]


def score_matrix(index_folder: Path, photos: list[Path], captions: list[str]) -> np.ndarray:
    """scores[c, p]: caption c against photo p, as a text search of the index scores them."""
    from retrieval.api import open_index

    index = open_index(str(index_folder))
    try:
        column = {p.name: i for i, p in enumerate(photos)}
        scores = np.full((len(captions), len(photos)), -np.inf, np.float32)
        for row, caption in enumerate(captions):
            for hit in index.search(caption, k=len(photos)):
                scores[row, column[Path(hit.path).name]] = hit.score
        return scores
    finally:
        index.close()


def caption_scores(pairs: list[tuple[str, str]], prefix: str) -> tuple[list[str], np.ndarray, harness.Run]:
    """Index the pairs' photos with `default` in a scratch folder and score every caption against
    every photo: (the photos in index order, scores[caption, photo], the index run's measurement)."""
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    sources = list(dict.fromkeys(image for image, _ in pairs))
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        folder = scratch / "photos"
        folder.mkdir()
        # Numbered copies: the dev set's photos come from many folders, some with one file name.
        photos = [folder / f"{i:03d}{Path(src).suffix.lower()}" for i, src in enumerate(sources)]
        for src, dst in zip(sources, photos):
            shutil.copyfile(src, dst)
        with harness.measure("index") as run:
            build_index([folder], index=str(scratch / "idx"), settings=IndexSettings(workers=0))
        return sources, score_matrix(scratch / "idx", photos, [caption for _, caption in pairs]), run
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@harness.command(out="bench-out/weak-match.json")
@PIP_ROOT
def main(out: Path, pip_root: tuple[str, ...]) -> None:
    pairs, missing = devset.load_pairs(pip_root, devset.SETS["v2"])
    report_missing(missing)
    sources, scores, run = caption_scores(pairs, "weak-match-")
    own = np.array([sources.index(image) for image, _ in pairs])
    captions = [caption for _, caption in pairs]

    rows_ = np.arange(len(captions))
    right = scores[rows_, own]
    present = scores.max(axis=1)
    others = scores.copy()
    others[rows_, own] = -np.inf
    absent = others.max(axis=1)
    skimage = np.array(["skimage/data/" in src for src in sources])
    foreign = scores[~skimage[own]][:, skimage].max(axis=1)
    rows = [
        {"weak_below": f"{t:.3f}", "present called weak": f"{np.mean(present < t):.1%}",
         "absent called weak": f"{np.mean(absent < t):.1%}", "foreign called weak": f"{np.mean(foreign < t):.1%}"}
        for t in THRESHOLDS
    ]

    def quantiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (5, 10, 25, 50, 75, 90, 95)}

    data = {
        "machine": harness.machine(), "index": run.as_dict(), "photos": len(sources), "captions": len(captions),
        "right": quantiles(right), "present": quantiles(present), "absent": quantiles(absent),
        "foreign": quantiles(foreign), "foreign_queries": len(foreign), "foreign_photos": int(skimage.sum()), "thresholds": rows,
    }
    title = (f"{len(sources)} dev-set photos, {len(captions)} captions, `default`.\n\n"
             f"right match: {data['right']}\n\nbest when present: {data['present']}\n\nbest when absent: {data['absent']}")
    harness.report("weak-match", data, rows, out, title)


if __name__ == "__main__":
    main()
