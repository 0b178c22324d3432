"""The run container's own Docker log is capped, and following it still stores every
line exactly once when the engine rotates and drops its files. A run is read through
an attach to its main process, entry for entry as the engine logs it, and the
engine's log takes over from an attach's cursor without a gap or a line twice."""

import struct
import threading
import time

import pytest

from runs.executors.base import LineRun, Limits, frames_in
from runs.executors import docker as docker_executor
from runs.executors.docker import (LOST_NOTICE, DockerExecutor, LogHeadLost, LogPosition, _AttachedEntries, _Dechunker,
                                  _docker_time, _FrameCutter, origin_line)
from runs.models import LogChunk
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


MARK = origin_line("0123456789abcdef")


def _cut(position: LogPosition, entries: list[tuple[int, int, bytes]]) -> list:
    """What a follow from `position` gives of a log of (stream kind, tenth of a second, text) entries."""
    wire = b"".join(_entry(kind, f"2026-11-25T22:05:{10 + tenth // 10:02d}.{tenth % 10}Z", text)
                    for kind, tenth, text in entries)
    position.restart()
    return _FrameCutter(position, MARK).frames(wire)


def test_the_origin_marks_are_counted_and_never_shown():
    # Each stream's first entry is the run's origin mark (gate_script); the engine may
    # write a stream's first lines before the other stream's mark.
    log = [(1, 0, MARK), (1, 1, b"out-1\n"), (2, 2, MARK), (1, 3, b"out-2\n"), (2, 4, b"err-1\n")]
    shown = _cut(LogPosition(), log)
    assert [(frame.stream, frame.data) for frame in shown] == [(0, b"out-1\n"), (0, b"out-2\n"), (1, b"err-1\n")]
    # Each frame's cursor goes on with what came after it.
    for index, frame in enumerate(shown):
        assert [f.data for f in _cut(LogPosition.decode(frame.cursor), log)] == [f.data for f in shown[index + 1:]]
    # An attach takes them off its streams as well, counting them as the engine's log does.
    wire = b"".join(struct.pack(">BxxxL", kind, len(data)) + data
                    for kind, data in [(1, MARK + b"out-1\n"), (2, MARK), (2, b"err-1\n"), (1, b"out-2\n")])
    attached = list(frames_in(_AttachedEntries(MARK).frames(wire, 1.0)))
    assert [frame.data for frame in attached] == [b"out-1\n", b"err-1\n", b"out-2\n"]
    assert [frame.cursor for frame in attached] == [LogPosition.attached(2, 0), LogPosition.attached(2, 2),
                                                     LogPosition.attached(3, 2)]
    # The engine's log from the attach's cursor after err-1: out-2 alone is left.
    assert [frame.data for frame in _cut(LogPosition.decode(attached[1].cursor), log)] == [b"out-2\n"]


def test_a_log_that_lost_its_head_is_told_not_counted_off():
    # The engine dropped the log's oldest file, both marks in it: the first entry kept is a run's line.
    kept = [(1, 50, b"out-900\n"), (2, 51, b"err-40\n"), (1, 52, b"out-901\n"), (1, 70, b"out-902\n")]
    with pytest.raises(LogHeadLost):  # from an attach's counts, which no longer say where to go on
        _cut(LogPosition.decode(LogPosition.attached(2, 1)), kept)
    from_start = _cut(LogPosition(), kept)  # nothing stored yet: all that is kept, behind the notice
    assert [frame.data for frame in from_start] == [LOST_NOTICE, b"out-900\n", b"err-40\n", b"out-901\n", b"out-902\n"]
    # By time, after the last output stored: what came later, behind the notice, which
    # has the cursor of where it stands (a collector dying after storing it goes on from there).
    stored_until = _docker_time(b"2026-11-25T22:05:15.1Z")
    after = _cut(LogPosition.after(stored_until), kept)
    assert [frame.data for frame in after] == [LOST_NOTICE, b"out-901\n", b"out-902\n"]
    assert [frame.data for frame in _cut(LogPosition.decode(after[0].cursor), kept)] == [b"out-901\n", b"out-902\n"]
    # A follow resumed by time owes the entries it read, stamped within two seconds of
    # its second: where the first entry kept is later, they are gone, and none is skipped.
    second_10 = int(_docker_time(b"2026-11-25T22:05:10Z"))
    assert [frame.data for frame in _cut(LogPosition(second_10, 2), kept)] == [
        LOST_NOTICE, b"out-900\n", b"err-40\n", b"out-901\n", b"out-902\n"]
    assert [frame.data for frame in _cut(LogPosition(second_10 + 4, 1), kept)] == [b"err-40\n", b"out-901\n", b"out-902\n"]


# stdout and stderr interleaved, a line of 40,000 bytes (three pieces in the engine's
# log), one of exactly 16 KiB (a piece and an empty end), and no newline at the end.
MIXED = ("i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo out-$i; echo err-$i >&2; done; "
         "head -c 40000 /dev/zero | tr '\\0' x; echo; head -c 16384 /dev/zero | tr '\\0' y; echo; printf tail")


def _started(alice, command: str) -> tuple:
    # Not dispatched (this test's transaction never commits): the test is the collector.
    source = {"name": "mixed", "image": BUSYBOX, "resources": {"preset": "tiny"}, "run": [{"command": command}]}
    run = create_run(user=alice, source=source, executor="docker")
    executor = DockerExecutor(TEST_INSTANCE)
    executor.prepare(run)
    executor.start(run, {}, Limits(cpus=1, memory_mb=64), [])
    return run, executor


def _frames(executor, run, cursor: int) -> list:
    return [frame for frame in executor.follow_logs(run, cursor) if frame is not None]


def _by_stream(frames, stream: int) -> list[bytes]:
    return [frame.data for frame in frames if frame.stream == stream]


def test_a_run_is_read_through_an_attach_entry_for_entry_as_the_engine_logs_it(alice, db, defaults, docker_engine):
    run, executor = _started(alice, MIXED)
    try:
        attached = _frames(executor, run, 0)  # the run waits at its gate for this read
        assert all(frame.cursor & LogPosition.ATTACH_BIT for frame in attached)
        # Read again from the start: the gate is open now, so this follows the engine's log.
        logged = _frames(executor, run, 0)
        assert not any(frame.cursor & LogPosition.ATTACH_BIT for frame in logged)
        for stream in (0, 1):
            assert _by_stream(attached, stream) == _by_stream(logged, stream)
        out = _by_stream(attached, 0)
        assert out[:2] == [b"out-1\n", b"out-2\n"] and len(out) == 3000 + 3 + 2 + 1
        assert out[-6:] == [b"x" * 16384, b"x" * 16384, b"x" * (40000 - 32768) + b"\n", b"y" * 16384, b"\n", b"tail\n"]
        assert _by_stream(attached, 1) == [b"err-%d\n" % i for i in range(1, 3001)]
        # From the cursor of any attached frame, the engine's log goes on with exactly
        # what came after it, in each stream.
        for cut in (0, 1, 999, 3000, 5999, len(attached) - 4, len(attached) - 2):
            rest = _frames(executor, run, attached[cut].cursor)
            for stream in (0, 1):
                assert _by_stream(attached[:cut + 1], stream) + _by_stream(rest, stream) == _by_stream(logged, stream), cut
    finally:
        executor.remove(run)


def test_an_attach_near_the_log_cap_hands_over_to_the_engine_log(alice, db, defaults, docker_engine, settings):
    # A log of 2 files of 5 MB keeps its first entry for about 1 MB of reading by an
    # attach (_log_cap_bytes); this run prints about 3 MB, as fast as it can.
    settings.RUNYARD_DOCKER_LOG_MAX_SIZE_MB = 5
    settings.RUNYARD_DOCKER_LOG_MAX_FILES = 2
    count = 30_000
    run, executor = _started(alice, f"awk 'BEGIN {{ for (i = 1; i <= {count}; i++) "
                                    f"printf \"line-%d-%s\\n\", i, \"{'p' * 90}\" }}'")
    try:
        frames = _frames(executor, run, 0)
        assert frames[0].cursor & LogPosition.ATTACH_BIT and not frames[-1].cursor & LogPosition.ATTACH_BIT
        numbers = [int(frame.data.split(b"-")[1]) for frame in frames]
        assert numbers == list(range(1, count + 1)), f"{count - len(set(numbers))} missing, {len(numbers) - len(set(numbers))} twice"
    finally:
        executor.remove(run)


def test_a_follow_after_the_engine_dropped_the_log_head_says_lines_are_missing_and_skips_none_it_kept(
        alice, db, defaults, docker_engine, settings, monkeypatch):
    # A collector reads a run through its attach, stores its first 50 lines and dies.
    # The run then prints about 4 MB, more than the engine keeps (2 files of 1 MB), so
    # the engine drops the log's oldest file: the origin mark and those 50 lines with
    # it. Counting 50 entries off what is left would skip 50 lines the engine still
    # has; the next collector says lines are missing, then stores every one it kept.
    settings.RUNYARD_DOCKER_LOG_MAX_SIZE_MB = 1
    settings.RUNYARD_DOCKER_LOG_MAX_FILES = 2
    monkeypatch.setattr(docker_executor, "ATTACH_SLACK_BYTES", 0)  # an attach may read up to 1 MB here
    late = 40_000
    run, executor = _started(alice, "i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo early-$i; done; "
                                    "while [ ! -e /tmp/go ]; do usleep 20000; done; "
                                    f"awk 'BEGIN {{ for (i = 1; i <= {late}; i++) "
                                    f"printf \"late-%d-%s\\n\", i, \"{'p' * 90}\" }}'; echo done")
    try:
        first = executor.follow_logs(run, 0)
        early = []
        for frame in first:
            if frame is not None:
                early.append(frame)
            if len(early) == 50:
                break
        first.close()  # the collector dies; what it read was stored
        assert [frame.data for frame in early] == [b"early-%d\n" % i for i in range(1, 51)]
        assert early[-1].cursor & LogPosition.ATTACH_BIT
        LogChunk.objects.create(run=run, first_line=1, line_count=50,
                                lines=[[frame.time, frame.stream, frame.data.decode()[:-1]] for frame in early])
        container = docker_engine.containers.get(executor.container_name(run))
        container.exec_run(["touch", "/tmp/go"])
        deadline = time.monotonic() + 60
        while not container.logs(tail=1).startswith(b"done"):
            assert time.monotonic() < deadline, "the run did not finish printing"
            time.sleep(0.2)
        kept = container.logs().splitlines()
        assert kept[0].startswith(b"late-"), kept[0]  # the oldest file is gone, the origin mark with it
        first_kept = int(kept[0].split(b"-")[1])

        for cursor in (early[-1].cursor, 0):  # from the attach's counts; from the start, nothing stored
            rest = _frames(executor, run, cursor)
            assert rest[-1].data == b"done\n"
            assert rest[0].data == LOST_NOTICE and rest[0].stream == 1
            numbers = [int(frame.data.split(b"-")[1]) for frame in rest[1:-1]]
            assert numbers == list(range(first_kept, late + 1)), (
                cursor, numbers[:3], f"{late + 1 - first_kept - len(set(numbers))} missing")
    finally:
        executor.remove(run)


def test_a_follow_of_a_quiet_run_closes_at_once(alice, db, defaults, docker_engine):
    # A collector that lets go of a run (its lease lost, an error) closes its follow
    # while the run prints nothing: the follow's reader then waits in a read that held
    # the lock closing the response takes, and the collector's thread hung for good.
    run, executor = _started(alice, "echo a; echo b; sleep 600")
    try:
        attached = executor.follow_logs(run, 0)
        assert next(attached).data == b"a\n"
        attached.close()
        follow = executor.follow_logs(run, 0)  # past the gate: the engine's log
        assert [next(follow).data, next(follow).data] == [b"a\n", b"b\n"]
        assert next(follow) is None  # a second with nothing: the reader waits in its read
        closed = threading.Event()
        threading.Thread(target=lambda: (follow.close(), closed.set()), daemon=True).start()
        assert closed.wait(20), "closing the follow of a quiet run hangs"
    finally:
        executor.remove(run)


def test_a_second_reader_does_not_open_the_gate_again(alice, db, defaults, docker_engine):
    # The gate is a line on the run's stdin. A collector that opened it and died before
    # storing a line leaves the cursor at 0: the next one must not send the run a line
    # of its own (the program here would echo it as an empty line).
    run, executor = _started(alice, 'while IFS= read -r line; do echo "got=[$line]"; [ "$line" = stop ] && break; done')
    try:
        first = executor.follow_logs(run, 0)
        assert next(first) is None  # attached, the gate opened; the program waits for input
        # The first collector dies once the run is past its gate (an attach ended sooner
        # may have its line dropped by the engine: open_gate waits so).
        assert executor._await_gate_opened(executor._container(run).id, patience=30)
        first.close()
        second = executor.follow_logs(run, 0)
        terminal = executor.open_terminal(run, "attach", 80, 24)
        printed, deadline, typed = [], time.monotonic() + 60, 0.0
        try:
            terminal.write(b"hello\r")
            for frame in second:  # a frame, or None every second while there is none
                assert time.monotonic() < deadline, f"the run printed {printed} and no more"
                if frame is not None:
                    printed.append(frame.data)
                if time.monotonic() - typed > 1:  # until the program has it (an attach may lose a line under load)
                    terminal.write(b"stop\r")
                    typed = time.monotonic()
        finally:
            terminal.close()
        assert printed[-1] == b"got=[stop]\n"
        assert b"got=[]\n" not in printed, printed
    finally:
        executor.remove(run)


@pytest.mark.parametrize("block_size", [1, 5, 8, 9, 100, 4096, 1 << 20])
def test_attached_output_cut_anywhere_gives_the_same_entries(block_size):
    # An attach's stream: an 8-byte header, then a piece of output as the process wrote
    # it; a line may lie across pieces, and the two streams' pieces alternate.
    writes = [(1, b"a\nb"), (1, b"c\n"), (2, b"e1\ne"), (1, b"\n\nlong-" + b"z" * 20000), (2, b"2\n"),
              (1, b"z" * 13000 + b"\nend"), (2, b"w" * 16384), (2, b"\n")]
    wire = b"".join(struct.pack(">BxxxL", kind, len(data)) + data for kind, data in writes)
    entries = _AttachedEntries()
    frames = []
    for at in range(0, len(wire), block_size):
        frames += frames_in(entries.frames(wire[at:at + block_size], 1.0))
    frames += entries.end(2.0)
    assert _by_stream(frames, 0) == [b"a\n", b"bc\n", b"\n", b"\n", b"long-" + b"z" * 16379, b"z" * 16384, b"z" * (20000 + 13000 - 16379 - 16384) + b"\n", b"end\n"]
    assert _by_stream(frames, 1) == [b"e1\n", b"e2\n", b"w" * 16384, b"\n"]
    assert frames[-1].cursor == LogPosition.attached(8, 4)
    assert [LogPosition.decode(frame.cursor).stored for frame in frames[:2]] == [[1, 0], [2, 0]]


def test_attached_short_lines_come_as_one_line_run():
    # The usual output, many short lines in one read, comes as a LineRun (no Python
    # object a line) whose frames are the entries one by one; a line with a \r, or one
    # long enough to be cut, comes as frames.
    lines = [b"step %d\n" % i for i in range(1000)]
    wire = struct.pack(">BxxxL", 1, 4000) + b"".join(lines)[:4000]
    wire += struct.pack(">BxxxL", 1, len(b"".join(lines)) - 4000) + b"".join(lines)[4000:]
    wire += struct.pack(">BxxxL", 2, 5) + b"e\rr\n\n"
    entries = _AttachedEntries()
    batch = entries.frames(wire, 5.0)
    assert type(batch[0]) is LineRun and batch[0].count == 1000 and len(batch) == 3
    frames = list(frames_in(batch))
    assert [frame.data for frame in frames] == lines + [b"e\rr\n", b"\n"]
    assert [frame.cursor for frame in frames] == [LogPosition.attached(n, 0) for n in range(1, 1001)] + [
        LogPosition.attached(1000, 1), LogPosition.attached(1000, 2)]
    assert {frame.time for frame in frames} == {5.0}
