"""The program that relays a run's port from inside its container (runs.executors.docker):
a statically linked BusyBox from the console's own host (RUNYARD_PORT_RELAY; Debian and
Ubuntu ship one in `busybox-static`), copied into a run the first time one of its
ports is opened. Static, because a run's image may have no C library, or another one."""

import io
import struct
import tarfile
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from runs.executors.base import ExecutorError

PT_INTERP = 3  # an ELF program header naming the dynamic loader: a program that needs one


def is_static_program(data: bytes) -> bool:
    """An ELF executable that needs no dynamic loader (no PT_INTERP program header)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # 64-bit
        (table,), (size, count) = struct.unpack_from(order + "Q", data, 32), struct.unpack_from(order + "HH", data, 54)
    else:
        (table,), (size, count) = struct.unpack_from(order + "I", data, 28), struct.unpack_from(order + "HH", data, 42)
    for index in range(count):
        at = table + index * size
        if at + 4 > len(data):
            return False
        if struct.unpack_from(order + "I", data, at)[0] == PT_INTERP:
            return False
    return True


@lru_cache(maxsize=2)
def _tar_of(source: str, destination: str) -> bytes:
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExecutorError(f"ports need a static BusyBox at {source} (RUNYARD_PORT_RELAY): {exc.strerror or exc}; "
                            "install busybox-static") from None
    if not is_static_program(data):
        raise ExecutorError(f"ports need a statically linked BusyBox: {source} (RUNYARD_PORT_RELAY) is not one; "
                            "install busybox-static")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # The file only: the engine makes the folders above it (0755), and leaves the image's own alone.
        member = tarfile.TarInfo(destination.strip("/"))
        member.size, member.mode = len(data), 0o755
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def relay_tar(destination: str) -> bytes:
    """The relay as a tar for put_archive at /, with the relay at `destination`."""
    return _tar_of(settings.RUNYARD_PORT_RELAY, destination)
