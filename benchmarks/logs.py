"""Log rows.

log-ingest: a run prints N lines. Floor: the same command under a bare `docker run`,
its output read to the end by a bare Docker client. Runyard: from create to every
line stored, with the collector's memory growth (this process's peak RSS over its
start: tasks run in-process here).

metric-ingest: a run prints N `#runyard step= loss=` reports; the same floor;
Runyard: create to every point stored. Goal: at least 100,000 points a second.

log-read: the last page of that log through the API's reader, against reading one
chunk row by primary key.
"""

import statistics
import time

from benchmarks.common import IMAGE, PeakRSS, Row, timed


def measure(ctx) -> list[Row]:
    lines = ctx.sizes["log_lines"]
    command = f"seq 1 {lines}"
    row, run_id = ingest_row(ctx, "log-ingest", command, lines=lines, points=0, unit="lines", max_ratio=2.0)
    points = ctx.sizes["metric_points"]
    reports = (f"awk 'BEGIN {{ for (i = 0; i < {points}; i++) "
               f"printf \"#runyard step=%d loss=%.6f\\n\", i, 1 / (i + 1) }}'")
    metric_row, _ = ingest_row(ctx, "metric-ingest", reports, lines=0, points=points, unit="points",
                               min_rate=100_000)
    return [row, read_row(run_id), metric_row]


def ingest_row(ctx, name: str, command: str, *, lines: int, points: int, unit: str,
               max_ratio: float | None = None, min_rate: float | None = None) -> tuple[Row, int]:
    """A few tries of one command: the bare client's run and read of its output against
    Runyard's create to all of it stored. The medians; and the last run's id."""
    from runs.services import create_run

    items = lines or points
    tries = []
    peaks = []
    for attempt in range(ctx.sizes["repeats"]):
        floor = docker_floor(command, lines + points)
        with PeakRSS() as memory:
            started = time.perf_counter()
            run = create_run(user=ctx.user, source={"name": name, "image": IMAGE, "run": [{"command": command}]},
                             executor="docker")
            wait_complete(run.pk)
            ours = time.perf_counter() - started
        check_stored(run.pk, lines=lines, points=points)  # off the clock: a million points read back
        tries.append((floor, ours))
        peaks.append(memory.grown_mb)
        print(f"    try {attempt + 1}: floor {floor:.2f} s, runyard {ours:.2f} s, ratio {ours / floor:.2f}, "
              f"memory +{memory.grown_mb:.0f} MB")
    floor = statistics.median(f for f, _ in tries)
    ours = statistics.median(o for _, o in tries)
    row = Row(name, f"{items:,} {unit}", floor, ours, "bare docker run, output read",
              max_ratio=max_ratio, min_rate=min_rate, rate=items / ours, rate_unit=f"{unit}/s",
              notes=[f"floor rate {items / floor:,.0f} {unit}/s; collector memory peak +{max(peaks):.0f} MB"])
    return row, run.pk


def docker_floor(command: str, expected_lines: int) -> float:
    """From `docker run` to the container's whole output read by a bare client."""
    import docker

    client = docker.from_env()
    started = time.perf_counter()
    container = client.containers.run(IMAGE, ["sh", "-c", command], detach=True, network_mode="none")
    try:
        container.wait()
        count = container.logs().count(b"\n")
        elapsed = time.perf_counter() - started
        assert count == expected_lines, (count, expected_lines)
        return elapsed
    finally:
        container.remove(force=True)
        client.close()


def wait_complete(run_id: int) -> None:
    """Until the run's whole output is stored and its container removed (log_complete
    is set with the removal, after the last chunk)."""
    from runs.models import Run

    # One small query every 20 ms: a poll that read the whole row every 10 ms took a
    # tenth of a core from the collector it measures (they share this process).
    while not Run.objects.filter(pk=run_id, log_complete=True).exists():
        time.sleep(0.02)


def check_stored(run_id: int, *, lines: int, points: int) -> None:
    from runs import metrics
    from runs.models import Run

    run = Run.objects.get(pk=run_id)
    assert run.log_lines == lines and run.status == "completed", (run.log_lines, run.status)
    stored = sum(len(metrics.columns(run, key)[1]) for key in metrics.keys(run) if not key.startswith("sys/"))
    assert stored == points, (stored, points)


def read_row(run_id: int) -> Row:
    from runs import logstore
    from runs.models import LogChunk, Run

    run = Run.objects.get(pk=run_id)
    chunk_id = LogChunk.objects.filter(run=run).order_by("-first_line").values_list("pk", flat=True).first()
    floor = timed(lambda: LogChunk.objects.get(pk=chunk_id).lines)
    ours = timed(lambda: logstore.read_lines(run, after=run.log_lines - 1000, limit=1000))
    # Not a row of issue 11's table: a page of the log should come within 50 ms.
    return Row("log-read", f"last 1,000 of {run.log_lines:,} lines", floor, ours, "one chunk row by key",
               max_seconds=0.05)
