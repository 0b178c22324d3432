"""Reading a run's metrics: the keys, and one series thinned for a chart.

A chart has a few hundred pixels across; a run may report 100,000 points or
more. A series is cut into buckets and each keeps its lowest and highest point,
so spikes and dips survive thinning, and a zoomed-in range is read again at
full detail.
"""

import datetime as dt
import sys
from array import array

from runs.models import MetricChunk, Run
from runs.system_metrics import is_system_key

X_AXES = ("step", "relative", "wall")


def keys(run: Run) -> list[str]:
    return sorted(MetricChunk.objects.filter(run=run).values_list("key", flat=True).distinct())


NO_STEP = -1


def _pack(typecode: str, items) -> bytes:
    packed = array(typecode, items)
    if sys.byteorder == "big":  # stored little-endian whatever the machine
        packed.byteswap()
    return packed.tobytes()


def _unpack(typecode: str, data) -> array:
    unpacked = array(typecode)
    unpacked.frombytes(bytes(data))
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked


def metric_chunk(run_id: int, key: str, points: list[tuple]) -> MetricChunk:
    """A row holding (step or None, value, unix time) points of one metric."""
    return MetricChunk(
        run_id=run_id, key=key, count=len(points),
        steps=_pack("q", (NO_STEP if step is None else step for step, _, _ in points)),
        values=_pack("d", (value for _, value, _ in points)),
        times=_pack("d", (at for _, _, at in points)),
    )


def extended(chunk: MetricChunk, points: list[tuple]) -> MetricChunk:
    """The same row (not saved) with `points` added after those it holds."""
    more = metric_chunk(chunk.run_id, chunk.key, points)
    chunk.count += more.count
    chunk.steps, chunk.values, chunk.times = (
        bytes(chunk.steps) + more.steps, bytes(chunk.values) + more.values, bytes(chunk.times) + more.times,
    )
    return chunk


def columns(run: Run, key: str) -> tuple[list, list[float], list[float]]:
    """One metric's steps (None where not given), values and times, in the order reported."""
    steps, values, times = array("q"), array("d"), array("d")
    rows = MetricChunk.objects.filter(run=run, key=key).order_by("id").values_list("steps", "values", "times")
    for chunk_steps, chunk_values, chunk_times in rows:
        steps.extend(_unpack("q", chunk_steps))
        values.extend(_unpack("d", chunk_values))
        times.extend(_unpack("d", chunk_times))
    return [None if step == NO_STEP else step for step in steps], values.tolist(), times.tolist()


def points(run: Run, key: str) -> list[tuple]:
    """Every (step or None, value, unix time) of one metric, in the order reported."""
    return list(zip(*columns(run, key)))


def series(run: Run, key: str, *, x: str = "step", max_points: int = 1000,
           x_min: float | None = None, x_max: float | None = None) -> dict | None:
    """{"x", "y", "total_points", "downsampled"}, or None if the run never reported `key`.

    x: "step" (the reported step, else the point's position), "relative" (seconds
    since the run started) or "wall" (ISO times; x_min and x_max are unix times).
    The system metrics (sys/...) have no step: for them "step" is "relative", and
    the answer's "x_axis" says so.
    """
    steps, ys, times = columns(run, key)
    if not ys:
        return None
    if x == "step" and is_system_key(key):
        x = "relative"  # a reading's position would say nothing; its time beside the run's steps does
    if x == "step":
        xs = [index if step is None else step for index, step in enumerate(steps)]
    elif x == "relative":
        origin = run.started_at.timestamp() if run.started_at else times[0]
        xs = [at - origin for at in times]
    else:
        xs = times
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
        stretch = values[start:end]
        low = start + stretch.index(min(stretch))
        high = start + stretch.index(max(stretch))
        picked.extend(sorted({low, high}))
    return picked


def _iso(unix_time: float) -> str:
    return dt.datetime.fromtimestamp(unix_time, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
