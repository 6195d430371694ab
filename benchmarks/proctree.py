"""/proc helpers shared by the benchmarks: a service's process and its workers."""

from __future__ import annotations

import os


def family(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, /proc/<pid>/stat fields after the command name) of `pid` and its direct
    children (uvicorn's workers); processes that vanish while being read are skipped."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[1] is the parent pid
        if int(entry) == pid or int(fields[1]) == pid:
            members.append((int(entry), fields))
    return members
