"""Metric rows.

metric-read: one metric of N points thinned to 2,000 for a chart, against
fetching its stored chunks alone. Goal: under 100 ms, its extremes kept.
"""

import time

from benchmarks.common import Row, timed


def measure(ctx) -> list[Row]:
    return [read_row(ctx)]


def seeded_run(ctx, count: int):
    """A completed run holding one metric `loss` of `count` points, with a spike
    and a dip a chart must keep; stored as the collector stores it."""
    from runs.metrics import metric_chunk
    from runs.models import MetricChunk, ResourcePreset, Run

    name = f"bench-metric-read-{count}"
    run = Run.objects.filter(name=name, team=ctx.team).first()
    if run is not None and MetricChunk.objects.filter(run=run).exists():
        return run
    run = Run.objects.create(name=name, owner=ctx.user, team=ctx.team, status="completed", spec={},
                             preset=ResourcePreset.objects.order_by("pk").first())
    now = time.time()
    batch = []
    for first in range(0, count, 2000):
        points = [(i, 1 / (i + 1), now + i * 0.001) for i in range(first, min(count, first + 2000))]
        batch.append(metric_chunk(run.pk, "loss", points))
        if len(batch) == 50:
            MetricChunk.objects.bulk_create(batch)
            batch = []
    MetricChunk.objects.bulk_create(batch)
    return run


def read_row(ctx) -> Row:
    from runs import metrics
    from runs.models import MetricChunk

    count = ctx.sizes["metric_read_points"]
    run = seeded_run(ctx, count)
    floor = timed(lambda: list(MetricChunk.objects.filter(run=run, key="loss").values_list("steps", "values", "times")),
                  repeat=10)
    ours = timed(lambda: metrics.series(run, "loss", max_points=2000), repeat=10)
    return Row("metric-read", f"{count:,} points to 2,000", floor, ours, "its chunks fetched", max_seconds=0.1)
