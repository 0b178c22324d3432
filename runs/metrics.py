"""Reading a run's metrics: the keys, and one series thinned for a chart.

A chart has a few hundred pixels across; a run may report 100,000 points or
more. A series is cut into buckets and each keeps its lowest and highest point,
so spikes and dips survive thinning, and a zoomed-in range is read again at
full detail.
"""

import datetime as dt

from runs.models import MetricPoint, Run

X_AXES = ("step", "relative", "wall")


def keys(run: Run) -> list[str]:
    return sorted(MetricPoint.objects.filter(run=run).values_list("key", flat=True).distinct())


def series(run: Run, key: str, *, x: str = "step", max_points: int = 1000,
           x_min: float | None = None, x_max: float | None = None) -> dict | None:
    """{"x", "y", "total_points", "downsampled"}, or None if the run never reported `key`.

    x: "step" (the reported step, else the point's position), "relative" (seconds
    since the run started) or "wall" (ISO times; x_min and x_max are unix times).
    """
    rows = list(MetricPoint.objects.filter(run=run, key=key).order_by("id").values_list("step", "value", "at"))
    if not rows:
        return None
    if x == "step":
        xs = [step if step is not None else index for index, (step, _, _) in enumerate(rows)]
    else:
        origin = run.started_at.timestamp() if (x == "relative" and run.started_at) else 0.0
        if x == "relative" and not run.started_at:
            origin = rows[0][2]
        xs = [at - origin for _, _, at in rows]
    ys = [value for _, value, _ in rows]
    if x_min is not None or x_max is not None:
        low = float("-inf") if x_min is None else x_min
        high = float("inf") if x_max is None else x_max
        kept = [i for i, value in enumerate(xs) if low <= value <= high]
        xs, ys = [xs[i] for i in kept], [ys[i] for i in kept]
    total = len(xs)
    picked = thin(ys, max_points)
    out_x = [xs[i] for i in picked]
    if x == "wall":
        out_x = [_iso(value) for value in out_x]
    elif x == "relative":
        out_x = [round(value, 3) for value in out_x]
    return {"key": key, "x_axis": x, "x": out_x, "y": [ys[i] for i in picked],
            "total_points": total, "downsampled": len(picked) < total}


def thin(values: list[float], max_points: int) -> list[int]:
    """Indexes of at most `max_points` values: each bucket's lowest and highest, in order."""
    count = len(values)
    if count <= max_points:
        return list(range(count))
    buckets = max(1, max_points // 2)
    picked: list[int] = []
    for bucket in range(buckets):
        start, end = bucket * count // buckets, (bucket + 1) * count // buckets
        if start >= end:
            continue
        low = min(range(start, end), key=values.__getitem__)
        high = max(range(start, end), key=values.__getitem__)
        picked.extend(sorted({low, high}))
    return picked


def _iso(unix_time: float) -> str:
    return dt.datetime.fromtimestamp(unix_time, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
