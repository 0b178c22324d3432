"""The run container's own Docker log is capped, and following it still stores every
line exactly once when the engine rotates and drops its files."""

import struct

import pytest

from runs.executors.base import Limits
from runs.executors.docker import DockerExecutor, LogPosition, _Dechunker, _docker_time, _FrameCutter
from runs.services import create_run
from tests.conftest import BUSYBOX, TEST_INSTANCE, wait_for

LINES = 40_000
# About 100 bytes an entry in the engine's file, 4 MB in all: with a cap of 2 files of
# 1 MiB the first files are long dropped when the run ends. Printed at about 4,000
# lines a second, so the reader keeps up (a reader that falls further behind than the
# whole cap loses what was dropped: that is what a cap means).
NOISY = ("i=0; while [ $i -lt %d ]; do j=0; while [ $j -lt 200 ]; do "
         "echo line-$i-padding-padding-padding-padding-padding-padding-padding; i=$((i+1)); j=$((j+1)); done; "
         "usleep 50000; done" % LINES)


def spec(command: str) -> str:
    return f"name: noisy\nimage: {BUSYBOX}\nresources: {{preset: tiny}}\nrun:\n  - command: {command!r}\n"


def test_a_run_container_log_is_capped(alice, engine, docker_engine):
    run = create_run(user=alice, source=spec("echo hi; sleep 30"), executor="docker")
    run = wait_for(run.pk, "running")
    container = docker_engine.containers.get(DockerExecutor(TEST_INSTANCE).container_name(run))
    config = container.attrs["HostConfig"]["LogConfig"]
    assert config == {"Type": "local", "Config": {"compress": "true", "max-file": "5", "max-size": "20m"}}


def test_following_a_log_larger_than_the_cap_reads_every_line_once(alice, db, defaults, docker_engine, settings):
    settings.RUNYARD_DOCKER_LOG_MAX_SIZE_MB = 1
    settings.RUNYARD_DOCKER_LOG_MAX_FILES = 2
    # Not dispatched (this test's transaction never commits): this test is the collector.
    run = create_run(user=alice, source=spec(NOISY), executor="docker")
    executor = DockerExecutor(TEST_INSTANCE)
    executor.prepare(run)
    executor.start(run, {}, Limits(cpus=1, memory_mb=64), [])
    try:
        seen: list[int] = []
        cursor, resumes = 0, 0
        while True:
            # Like a worker that dies now and then: resume from the stored cursor.
            frames = executor.follow_logs(run, cursor)
            for frame in frames:
                if frame is None:
                    continue
                text = frame.data.decode()
                seen.append(int(text.split("-")[1]))
                cursor = frame.cursor
                if len(seen) % 5_000 == 0:
                    break
            else:
                break
            frames.close()
            resumes += 1
        assert resumes >= 5
        assert LogPosition.decode(cursor).since > 0  # resumed by time, not from the start
        assert len(seen) == LINES, f"{LINES - len(set(seen))} missing, {len(seen) - len(set(seen))} twice"
        assert seen == list(range(LINES))
        # The engine kept only its cap: the first lines are gone from its copy.
        container = docker_engine.containers.get(executor.container_name(run))
        assert not container.logs(tail="all").startswith(b"line-0-")
    finally:
        executor.remove(run)


@pytest.mark.parametrize("cursor", [0, 12345])
def test_a_cursor_from_before_the_cap_means_a_count_from_the_start(cursor):
    position = LogPosition.decode(cursor)
    assert (position.since, position.count) == (0, cursor)
    assert position.encode() == cursor


def _entry(kind: int, stamp: str, text: bytes) -> bytes:
    payload = stamp.encode() + b" " + text
    return struct.pack(">BxxxL", kind, len(payload)) + payload


def test_frames_cut_across_read_blocks_are_the_same_as_read_whole():
    # The engine's logs body: an HTTP chunk per entry; the collector reads it in blocks
    # cut anywhere, in a chunk's size line, its data, or an entry's header.
    entries = [_entry(1, f"2026-11-25T22:05:{10 + i // 4:02d}.{123456700 + i}Z", b"line %d\n" % i) for i in range(40)]
    entries.append(_entry(2, "2026-11-25T22:05:30.5Z", b"on stderr, stamp without trailing zeros\n"))
    entries.append(_entry(1, "2026-11-25T22:05:31Z", b"no fraction and no newline"))
    wire = b"".join(b"%x\r\n" % len(entry) + entry + b"\r\n" for entry in entries) + b"0\r\n\r\n"

    def read(block_size: int) -> list:
        body, cutter = _Dechunker(), _FrameCutter(LogPosition())
        frames = []
        for at in range(0, len(wire), block_size):
            frames += cutter.frames(body.feed(wire[at:at + block_size]))
        assert body.ended and not cutter.rest
        return frames

    whole = read(len(wire))
    assert [frame.data for frame in whole] == [b"line %d\n" % i for i in range(40)] + [
        b"on stderr, stamp without trailing zeros\n", b"no fraction and no newline\n"]
    assert [frame.stream for frame in whole[-2:]] == [1, 0]
    assert whole[0].time == _docker_time(b"2026-11-25T22:05:10.1234567Z")
    assert whole[-2].time == _docker_time(b"2026-11-25T22:05:30.5Z")
    assert whole[-1].time == _docker_time(b"2026-11-25T22:05:31Z")
    for block_size in (1, 2, 3, 7, 13, 64, 1000):
        assert read(block_size) == whole
    # Each frame's cursor resumes just after it: a follow from there skips exactly what came before.
    resumed = _FrameCutter(LogPosition.decode(whole[9].cursor))
    resumed.position.restart()
    again = [entry for entry in entries if int(_docker_time(entry[8:].split(b" ")[0])) >= resumed.position.since]
    assert [frame.data for frame in resumed.frames(b"".join(again))] == [frame.data for frame in whole[10:]]
