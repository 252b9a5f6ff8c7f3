"""The cache folder: $RETRIEVAL_CACHE, else XDG's user cache folder on Linux, as before platformdirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from retrieval.paths import cache_dir


def test_retrieval_cache_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_xdg_cache_home_then_home_cache_on_linux(monkeypatch, tmp_path):
    monkeypatch.delenv("RETRIEVAL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "retrieval"
    for unset in (lambda: monkeypatch.delenv("XDG_CACHE_HOME"), lambda: monkeypatch.setenv("XDG_CACHE_HOME", "")):
        unset()
        assert cache_dir() == tmp_path / "home" / ".cache" / "retrieval"
    assert not Path(tmp_path / "home").exists()  # asking creates nothing
