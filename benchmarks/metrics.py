"""Metric rows.

metric-read: one metric of N points thinned to 2,000 for a chart, against
fetching its stored chunks alone. Goal: under 100 ms, its extremes kept (a spike
and a dip placed at known steps must come back, at those steps).

metric-zoom: 1% of the same series at full detail (every point of the range),
against fetching the chunks that hold the range.
"""

import time

from benchmarks.common import Row, timed

KEY = "loss"
SPIKE, DIP = 50.0, -50.0


def measure(ctx) -> list[Row]:
    run = seeded_run(ctx, ctx.sizes["metric_read_points"])
    return [read_row(ctx, run), zoom_row(ctx, run)]


def spike_steps(count: int) -> tuple[int, int]:
    return count * 37 // 100 + 3, count * 71 // 100 + 5


def seeded_run(ctx, count: int):
    """A completed run holding one metric `loss` of `count` points, with a spike
    and a dip a chart must keep; stored as the collector stores it."""
    from runs.metrics import metric_chunk
    from runs.models import MetricChunk, ResourcePreset, Run

    from django.utils import timezone

    name = f"bench-metric-read-{count}"
    # A finished docker run whose container is gone: nothing for the reconciler to do.
    settled = {"executor": "docker", "log_complete": True, "container_removed_at": timezone.now()}
    Run.objects.filter(name=name, team=ctx.team, container_removed_at__isnull=True).update(**settled)
    run = Run.objects.filter(name=name, team=ctx.team).first()
    if run is not None:
        chunks = MetricChunk.objects.filter(run=run)
        if chunks.exists() and not chunks.filter(time_low__isnull=True).exists():
            return run
        chunks.delete()  # stored before chunks had summaries: stored again as they are now
    else:
        run = Run.objects.create(name=name, owner=ctx.user, team=ctx.team, status="completed", spec={},
                                 preset=ResourcePreset.objects.order_by("pk").first(), **settled)
    spike, dip = spike_steps(count)
    now = time.time()
    batch = []
    for first in range(0, count, 2000):
        points = [(i, SPIKE if i == spike else DIP if i == dip else 1 / (i + 1), now + i * 0.001)
                  for i in range(first, min(count, first + 2000))]
        batch.append(metric_chunk(run.pk, KEY, points))
        if len(batch) == 50:
            MetricChunk.objects.bulk_create(batch)
            batch = []
    MetricChunk.objects.bulk_create(batch)
    return run


def read_row(ctx, run) -> Row:
    from runs import metrics
    from runs.models import MetricChunk

    count = ctx.sizes["metric_read_points"]
    floor = timed(lambda: list(MetricChunk.objects.filter(run=run, key=KEY).values_list("steps", "values", "times")),
                  repeat=10)
    ours = timed(lambda: metrics.series(run, KEY, max_points=2000), repeat=10)
    row = Row("metric-read", f"{count:,} points to 2,000", floor, ours, "its chunks fetched", max_seconds=0.1)
    found = metrics.series(run, KEY, max_points=2000)
    spike, dip = spike_steps(count)
    kept = [(x, y) for x, y in zip(found["x"], found["y"]) if y in (SPIKE, DIP)]
    if sorted(kept) == [(spike, SPIKE), (dip, DIP)] and len(found["y"]) <= 2000 and found["total_points"] == count:
        row.notes.append(f"spike and dip kept at their steps ({len(found['y'])} points drawn)")
    else:
        row.notes.append(f"EXTREMES LOST: kept {kept}, expected {[(spike, SPIKE), (dip, DIP)]}")
    return row


def zoom_row(ctx, run) -> Row:
    from runs import metrics
    from runs.models import MetricChunk

    count = ctx.sizes["metric_read_points"]
    width = max(1, count // 100)
    low, high = count // 2, count // 2 + width - 1

    def fetch_range():  # the chunks holding the range, by their steps
        return list(MetricChunk.objects.filter(run=run, key=KEY, step_high__gte=low, step_low__lte=high)
                    .values_list("steps", "values", "times"))

    floor = timed(fetch_range, repeat=10)
    ours = timed(lambda: metrics.series(run, KEY, max_points=width, x_min=low, x_max=high), repeat=10)
    row = Row("metric-zoom", f"1% of {count:,} points, every point", floor, ours, "the chunks in range fetched",
              max_seconds=0.1)
    found = metrics.series(run, KEY, max_points=width, x_min=low, x_max=high)
    if found["x"] == list(range(low, high + 1)) and not found["downsampled"]:
        row.notes.append(f"{width:,} points, exactly those in range")
    else:
        row.notes.append(f"RANGE WRONG: {found['total_points']} points from {found['x'][:1]} to {found['x'][-1:]}")
    return row
