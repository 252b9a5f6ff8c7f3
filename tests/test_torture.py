"""The torture suite, bounded: 20 seeded kill points spread over every phase of a run, readers
searching throughout, and a few hundred bad inputs of every kind. scripts/torture.py runs
the full version (200 kill points, 1,000 bad inputs) and docs/reliability.md has its figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def torture():
    # The kill loop forks its runs from a server process that imports this module by name.
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("torture", SCRIPTS / "torture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["torture"] = module
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPTS))


@pytest.mark.slow
def test_twenty_kill_points_in_every_phase_break_no_invariant(torture, tmp_path):
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
def test_bad_inputs_of_every_kind_end_indexed_or_skipped_with_a_reason(torture, tmp_path):
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
