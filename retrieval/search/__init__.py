"""Ranking matches: queries (:mod:`.query`), filters (:mod:`.filters`), duplicates, contact sheets,
and what a long-lived caller keeps between searches (:mod:`.searcher`, built from :mod:`.settings`)."""
