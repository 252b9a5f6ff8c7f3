"""The Linux process table, read from /proc, for the scripts that watch worker processes."""

from __future__ import annotations

import os


def process_table() -> dict[int, list[str]]:
    """Each process's /proc/PID/stat fields after its command name: state, ppid, ...

    Field i of the list is field i + 3 of stat(5) (utime is [11], stime [12]). The command
    name is cut off at its last ')' because it may itself hold spaces or parentheses.
    """
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                table[int(entry)] = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone between listing and reading
            continue
    return table


def live_children(pid: int, table: dict[int, list[str]] | None = None) -> list[int]:
    """The processes whose parent is `pid`, zombies left out."""
    table = process_table() if table is None else table
    return [child for child, fields in table.items() if int(fields[1]) == pid and fields[0] != "Z"]
