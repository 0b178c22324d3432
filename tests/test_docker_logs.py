"""The run container's own Docker log is capped, and following it still stores every
line exactly once when the engine rotates and drops its files."""

import pytest

from runs.executors.base import Limits
from runs.executors.docker import DockerExecutor, LogPosition
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
