"""Command-line habits: --version, shell completion, -q, stdout for results and stderr for the rest,
documented exit statuses, no colour codes. Ctrl-C's 130 is tested in test_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_image

from retrieval.cli import main

RETRIEVAL = str(Path(sys.executable).with_name("retrieval"))


def run(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([RETRIEVAL, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=300)


def test_version_is_the_package_version():
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert version("retrieval") in result.output


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --no-files --command retrieval")])
def test_completion_scripts_come_from_click(shell, marker):
    result = run(env={"_RETRIEVAL_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


def test_completion_completes_command_names_and_options():
    result = run(env={"_RETRIEVAL_COMPLETE": "bash_complete", "COMP_WORDS": "retrieval sea", "COMP_CWORD": "1"})
    assert "plain,search" in result.stdout.splitlines()
    result = run(env={"_RETRIEVAL_COMPLETE": "bash_complete", "COMP_WORDS": "retrieval search --pa", "COMP_CWORD": "2"})
    assert "plain,--paths" in result.stdout.splitlines()


def test_exit_status_for_a_usage_error_is_2_and_for_a_user_error_1(tmp_path):
    usage = run("search", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr and usage.stdout == ""
    missing = run("search", "a cat", "--index", tmp_path / "nope")
    assert missing.returncode == 1 and "no index at" in missing.stderr
    assert "Traceback" not in missing.stderr and missing.stdout == ""


@pytest.mark.slow
def test_results_on_stdout_notes_on_stderr_and_quiet_silences_notes(tmp_path):
    folder = tmp_path / "photos"
    for i in range(3):
        make_image(folder / f"img{i}.jpg", seed=i, size=(96, 80))
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    index = tmp_path / "idx"

    loud = run("index", folder, "--index", index, env={"NO_COLOR": "1"})
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.startswith("added 3,") and loud.stdout.count("\n") == 1  # the summary alone
    assert "skipped" in loud.stderr and "broken.jpg" in loud.stderr
    assert "\x1b[" not in loud.stdout + loud.stderr  # nothing is coloured, so NO_COLOR holds

    (folder / "img9.jpg").write_bytes((folder / "img0.jpg").read_bytes())
    quiet = run("-q", "index", folder, "--index", index)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.startswith("added 1,")

    as_json = run("index", folder, "--index", index, "--json")
    assert json.loads(as_json.stdout)["unchanged"] == 4  # stdout is exactly one JSON document

    found = run("-q", "search", "a picture", "--index", index, "--paths", "-k", "2")
    assert found.returncode == 0 and found.stderr == ""
    assert len(found.stdout.splitlines()) == 2 and all(Path(p).exists() for p in found.stdout.splitlines())
