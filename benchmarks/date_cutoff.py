"""Calibrate `date_cutoff`: the score under which `retrieval search --sort date` drops a match.

Sorted by date, the best match is no longer first, so weak matches must go before the sort,
and score scales differ by aligner: the cutoff is measured. The dev set's photos (v2, those
installed here) are indexed with the `default` aligner and each hand-written caption is
searched over all of them. The score of a caption's own photo (its right match) is what a cutoff
must keep:

- on the **tune** half, the cutoff is the 10th percentile of those scores: it keeps 90% of the
  right matches;
- on the **test** half, the report gives what that value costs: the share of right matches it
  drops (the recall lost), and how many of the photos pass it per caption (what a date-sorted
  list still holds).

The shipped value (`retrieval/search/relevance.py`, DATE_CUTOFF) and how it was chosen are in
docs/search.md#sorted-by-date.

    python -m benchmarks.date_cutoff --out bench-out/date-cutoff.json
    python -m benchmarks.date_cutoff --pip-root /tmp/devset-pip
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from benchmarks import harness
from benchmarks.devset import PIP_ROOT, report_missing
from benchmarks.weak_match import caption_scores
from retrieval.evaluation import devset

#: The share of right matches the cutoff keeps on the tune half.
KEEP = 0.90


@harness.command(out="bench-out/date-cutoff.json")
@PIP_ROOT
@click.option("--keep", default=KEEP, show_default=True, type=click.FloatRange(0.5, 1.0),
              help="Share of the tune half's right matches the cutoff keeps.")
def main(out: Path, pip_root: tuple[str, ...], keep: float) -> None:
    from retrieval.search.relevance import date_cutoff

    halves = {}
    for split in ("tune", "test"):
        pairs, missing = devset.load_pairs(pip_root, devset.SETS["v2"], split)
        report_missing(missing, f"{split} photos")
        halves[split] = pairs
    pairs = halves["tune"] + halves["test"]
    sources, scores, run = caption_scores(pairs, "date-cutoff-")

    own = np.array([sources.index(image) for image, _ in pairs])
    right = scores[np.arange(len(pairs)), own]
    tune = np.arange(len(pairs)) < len(halves["tune"])
    cutoff = round(float(np.percentile(right[tune], 100 * (1 - keep))), 3)
    test_right, test_scores = right[~tune], scores[~tune]
    shipped = date_cutoff("default")
    rows = []
    for label, value in (("measured", cutoff), ("shipped", shipped)):
        if value is None:
            continue
        passing = (test_scores >= value).sum(axis=1)
        rows.append({
            "cutoff": label, "score": f"{value:.3f}",
            "tune right matches kept": f"{np.mean(right[tune] >= value):.1%}",
            "test right matches kept": f"{np.mean(test_right >= value):.1%}",
            "test recall lost": f"{np.mean(test_right < value):.1%}",
            "photos passing per test caption (median)": f"{np.median(passing):.0f} of {len(sources)}",
        })

    def quantiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (5, 10, 25, 50, 75, 90, 95)}

    data = {
        "machine": harness.machine(), "index": run.as_dict(), "photos": len(sources), "keep": keep,
        "tune_captions": int(tune.sum()), "test_captions": int((~tune).sum()),
        "right_tune": quantiles(right[tune]), "right_test": quantiles(test_right),
        "cutoff": cutoff, "shipped": shipped, "rows": rows,
    }
    title = (f"{len(sources)} dev-set photos, {int(tune.sum())} tune and {int((~tune).sum())} test captions, `default`.\n\n"
             f"right match, tune: {data['right_tune']}\n\nright match, test: {data['right_test']}\n\n"
             f"cutoff keeping {keep:.0%} of the tune half's right matches: {cutoff:.3f}")
    harness.report("date-cutoff", data, rows, out, title)


if __name__ == "__main__":
    main()
