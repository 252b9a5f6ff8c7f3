"""The torture suite, bounded: 20 seeded kill points spread over every phase of a run, readers
searching throughout, and a few hundred bad inputs of every kind. `python -m benchmarks.torture`
runs the full version (200 kill points, 1,000 bad inputs) and docs/reliability.md has its figures.
"""

from __future__ import annotations

import pytest

# The repository root is on the path (pytest's `pythonpath`): the kill loop's forked runs and
# the bad-input child import this module by its name, benchmarks.torture, too.
from benchmarks import torture


@pytest.mark.slow
def test_twenty_kill_points_in_every_phase_break_no_invariant(tmp_path):
    figures = torture.kill_loop(tmp_path, kills=20, seed=3, default_every=0, readers=1, log=lambda *_: None)
    assert figures["violations"] == []
    assert figures["kill_points"] == 20 and figures["completions"] == 20
    # Seeded kills land in most phases (a phase the run finishes too fast to catch counts as finished).
    assert len(figures["killed_by_phase"]) >= 5, figures["killed_by_phase"]
    assert figures["workers_outlived_parent"] == 0
    readers = figures["readers"]
    assert readers["searches"] > 0 and readers["errors"] == 0 and readers["inconsistent_answers"] == 0
    assert readers["generations_seen"] >= 10  # the readers really saw the index change under them


@pytest.mark.slow
def test_bad_inputs_of_every_kind_end_indexed_or_skipped_with_a_reason(tmp_path):
    figures = torture.bad_inputs(tmp_path / "bad", n=300, seed=5, decode_seconds=10.0)
    assert figures["violations"] == []
    assert figures["mutants"] >= 300
    kinds = figures["by_kind"]
    # A directory named like an image is walked into: its inside file stands for it.
    assert set(torture.MUTANT_KINDS) - {"directory"} | {"valid_in_directory"} <= set(kinds)
    for kind in ("zero_bytes", "fifo", "socket", "dangling_link", "symlink_loop", "truncated"):
        assert set(kinds[kind]) == {"skipped"}, (kind, kinds[kind])
    for kind in ("valid", "newline_name", "valid_in_directory"):
        assert set(kinds[kind]) == {"indexed"}, (kind, kinds[kind])
    if figures["unreadable_tested_as"].startswith("nobody"):
        assert set(kinds["unreadable"]) == {"skipped"}
    assert figures["slowest_load_s"] < 10.0 * 1.25 + 1  # the alarm lands between decoder slices
