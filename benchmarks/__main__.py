"""`make bench`: Runyard's speed against a baseline measured in the same run.

log-ingest: a container prints N lines. Baseline: a bare Docker API client reads
the container's whole log (the floor any collector stands on). Runyard: the same
output, from the run turning `running` to every line stored in the database.
The ratio is what Runyard's numbering, chunking and transactions cost on top.

log-read: reading the last page of a 200,000-line log through the API's reader,
against reading one chunk row by primary key (the floor of any read).

metric-ingest: a container prints N `#runyard step= loss=` reports. Baseline: the
bare client reading that output, as for log-ingest; Runyard: from `running` to
every point stored.

metric-read: one metric of N points thinned for a chart (1,000 points) through
the API's reader, against fetching its stored chunks alone (the floor of any
chart of the whole series).
"""

import os
import statistics
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ["RUNYARD_TASKS_IN_PROCESS"] = "1"
os.environ.setdefault("SECRET_KEY", "runyard-bench-only")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

LINES = int(os.environ.get("BENCH_LINES", "200000"))
IMAGE = "runyard/busybox:latest"


def main() -> int:
    from runs.executors.docker import engine_reachable

    if not engine_reachable():
        print("no Docker engine reachable: nothing to measure")
        return 1
    connection.creation.create_test_db(verbosity=0, keepdb=True)
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench")
    run_id = ingest_bench(user, "log-ingest", "lines", f"seq 1 {LINES}", lines=LINES, points=0)
    read_bench(run_id)
    metric_bench(user)
    return 0


def ingest_bench(user, name: str, unit: str, command: str, *, lines: int, points: int) -> int:
    """Three tries of one command: the bare client's read of its output against
    Runyard storing it all; prints the medians; returns the last run's id."""
    from runs.services import create_run

    results = []
    for attempt in range(3):
        baseline = docker_floor(command)
        run = create_run(user=user, source={"name": name, "image": IMAGE, "run": [{"command": command}]}, executor="docker")
        ours = wait_stored(run.pk, lines=lines, points=points)
        results.append((baseline, ours))
        print(f"  {name} try {attempt + 1}: docker floor {baseline:.2f} s, runyard {ours:.2f} s, ratio {ours / baseline:.2f}")
    floor = statistics.median(b for b, _ in results)
    ours = statistics.median(r for _, r in results)
    print(f"{name} ({LINES} {unit}): floor {floor:.2f} s, runyard {ours:.2f} s, "
          f"{LINES / ours:,.0f} {unit}/s, ratio {ours / floor:.2f}")
    return run.pk


def docker_floor(command: str) -> float:
    """From the container's start to all its lines read by a bare client."""
    import docker

    client = docker.from_env()
    container = client.containers.run(IMAGE, ["sh", "-c", command], detach=True, network_mode="none")
    try:
        started = time.perf_counter()
        container.wait()
        count = container.logs().count(b"\n")
        elapsed = time.perf_counter() - started
        assert count == LINES, count
        return elapsed
    finally:
        container.remove(force=True)


def wait_stored(run_id: int, *, lines: int, points: int) -> float:
    from runs import metrics
    from runs.models import Run

    while Run.objects.filter(pk=run_id, started_at__isnull=True, status__in=["pending", "initializing"]).exists():
        time.sleep(0.01)
    started = time.perf_counter()
    while True:
        run = Run.objects.get(pk=run_id)
        if run.log_complete:
            elapsed = time.perf_counter() - started
            assert run.log_lines == lines and run.status == "completed", (run.log_lines, run.status)
            assert sum(len(metrics.points(run, key)) for key in metrics.keys(run)) == points
            return elapsed
        time.sleep(0.01)


def metric_bench(user) -> None:
    from runs import metrics
    from runs.models import MetricChunk, Run

    command = f"awk 'BEGIN {{ for (i = 0; i < {LINES}; i++) printf \"#runyard step=%d loss=%.6f\\n\", i, 1 / (i + 1) }}'"
    run = Run.objects.get(pk=ingest_bench(user, "metric-ingest", "points", command, lines=0, points=LINES))
    floor = timed(lambda: list(MetricChunk.objects.filter(run=run, key="loss").values_list("steps", "values", "times")), repeat=10)
    ours = timed(lambda: metrics.series(run, "loss", max_points=1000), repeat=10)
    print(f"metric-read ({LINES} points to 1000): floor {floor * 1000:.1f} ms, runyard {ours * 1000:.1f} ms, ratio {ours / floor:.2f}")


def timed(fn, repeat=50) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def read_bench(run_id: int) -> None:
    from runs import logstore
    from runs.models import LogChunk, Run

    run = Run.objects.get(pk=run_id)
    chunk_id = LogChunk.objects.filter(run=run).order_by("-first_line").values_list("pk", flat=True).first()

    floor = timed(lambda: LogChunk.objects.get(pk=chunk_id).lines)
    ours = timed(lambda: logstore.read_lines(run, after=run.log_lines - 1000, limit=1000))
    print(f"log-read (last 1000 of {run.log_lines} lines): floor {floor * 1000:.2f} ms, runyard {ours * 1000:.2f} ms, ratio {ours / floor:.2f}")


if __name__ == "__main__":
    sys.exit(main())
