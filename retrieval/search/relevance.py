"""Per-model score constants: below `weak_below` no result is a close match; below `date_cutoff`
a date-sorted search drops a match.

Scores are cosine similarities on each model's own scale, so the cutoff is per model and
measured, not guessed: ``python -m benchmarks.weak_match`` measures it for `default` on the
dev set, and docs/server.md#weak-matches says how the value below was chosen;
``python -m benchmarks.date_cutoff`` measures the date sort's cutoff, and docs/search.md#sorted-by-date
says how. A model without a measured value gets None: no hint and no cutoff, rather than a wrong one.
"""

from __future__ import annotations

#: Model spec -> the best text-to-image score under which no result is a close match.
#: open_clip models score text against images on a lower, narrower scale (about 0.2 to 0.35)
#: that has not been measured here, so they have none.
WEAK_BELOW = {"default": 0.30}


def weak_below(model: str | None) -> float | None:
    """The cutoff for an index built with `model` (its catalog's ``model``), or None if unmeasured."""
    return WEAK_BELOW.get(model) if model else None


#: Model spec -> the score under which `search --sort date` drops a match unless --min-score says
#: otherwise: the one that keeps 90% of the right matches on the dev set's tune half. open_clip
#: models are not measured: a date sort over them cuts nothing unless asked to.
DATE_CUTOFF: dict[str, float] = {"default": 0.29}


def date_cutoff(model: str | None) -> float | None:
    """The date sort's default cutoff for an index built with `model`, or None if unmeasured."""
    return DATE_CUTOFF.get(model) if model else None
