"""How good a text search's best score is: below `weak_below`, none of the results is a close match.

Scores are cosine similarities on each model's own scale, so the cutoff is per model and
measured, not guessed: ``python -m benchmarks.weak_match`` measures it for `default` on the
dev set, and docs/server.md#weak-matches says how the value below was chosen. A model without a
measured value gets None: no hint, rather than a wrong one.
"""

from __future__ import annotations

#: Model spec -> the best text-to-image score under which no result is a close match.
#: open_clip models score text against images on a lower, narrower scale (about 0.2 to 0.35)
#: that has not been measured here, so they have none.
WEAK_BELOW = {"default": 0.30}


def weak_below(model: str | None) -> float | None:
    """The cutoff for an index built with `model` (its catalog's ``model``), or None if unmeasured."""
    return WEAK_BELOW.get(model) if model else None
