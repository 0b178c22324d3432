"""Folders and files only the console's own user may read: what holds secrets
(a local run's env.json), raw output, stored files and the SQLite database.

Modes are given explicitly, never through the umask: the umask is process-wide,
and the console runs many threads.
"""

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """A 0700 folder, even if it was made before with a looser mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # there already, from a start tried before
    with os.fdopen(fd, "w") as f:
        f.write(text)


def open_private_for_append(path: Path):
    """A 0600 file opened to append bytes."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def make_private(path: str) -> None:
    """Take group and other access away from an existing file, if it is there."""
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        pass
