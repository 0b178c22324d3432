"""Finding every process a web terminal started, so that ending it really ends it.

A terminal's shell holds the run's secrets in its environment; what it started
must not outlive it. Its processes are found two ways on this host's /proc: by
the marker in their environment (TERMINAL_MARKER=<the terminal's own random
value>, inherited by everything the shell starts, even after `setsid`), and by
the shell's session (even after `env -i`). A session counts only when a marked
process belongs to it, so a PID reused since can never be mistaken for the shell.
"""

import os
import signal
from pathlib import Path

from runs.executors.base import TERMINAL_MARKER

PROC = Path("/proc")


def _session_of(process: Path) -> int | None:
    # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces and ")".
    fields = (process / "stat").read_text().rpartition(")")[2].split()
    return int(fields[3]) if len(fields) > 3 else None


def terminal_processes(marker: str, shell_pid: int | None, cgroup: str = "") -> list[int]:
    """PIDs (on this host) of the terminal's processes; only those whose cgroup
    names `cgroup` when it is given (a container's id)."""
    entry = f"{TERMINAL_MARKER}={marker}".encode()
    marked: set[int] = set()
    by_session: dict[int, set[int]] = {}
    try:
        processes = [p for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []  # no /proc here
    for process in processes:
        try:
            if cgroup and cgroup not in (process / "cgroup").read_text():
                continue
            session = _session_of(process)
            by_session.setdefault(session, set()).add(int(process.name))
            if entry in (process / "environ").read_bytes().split(b"\0"):
                marked.add(int(process.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    found = set(marked)
    if shell_pid is not None and marked & by_session.get(shell_pid, set()):
        found |= by_session[shell_pid]
    return sorted(found)


def kill_terminal_processes(marker: str, shell_pid: int | None, cgroup: str = "") -> int:
    """SIGKILL every process of the terminal; returns how many were signalled."""
    found = terminal_processes(marker, shell_pid, cgroup)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(found)


def can_see(pid: int, cgroup: str) -> bool:
    """Is host process `pid` visible here and in that cgroup (a container's id)?"""
    try:
        return bool(cgroup) and cgroup in (PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return False
