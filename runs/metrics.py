"""Reading a run's metrics: the keys, and one series thinned for a chart.

A chart has a few hundred pixels across; a run may report 100,000 points or
more. A series is cut into buckets and each keeps its lowest and highest point,
so spikes and dips survive thinning, and a zoomed-in range is read again at
full detail.
"""

import datetime as dt
import sys
from array import array
from bisect import bisect_left

from runs.models import MetricChunk, Run
from runs.system_metrics import is_system_key

X_AXES = ("step", "relative", "wall")


def keys(run: Run) -> list[str]:
    return sorted(MetricChunk.objects.filter(run=run).values_list("key", flat=True).distinct())


NO_STEP = -1


def _unpack(typecode: str, data) -> array:
    unpacked = array(typecode)
    unpacked.frombytes(bytes(data))
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked


def metric_chunk(run_id: int, key: str, points: list[tuple]) -> MetricChunk:
    """A row holding (step or None, value, unix time) points of one metric."""
    steps = array("q", (NO_STEP if step is None else step for step, _, _ in points))
    values = array("d", (value for _, value, _ in points))
    times = array("d", (at for _, _, at in points))
    chunk = MetricChunk(run_id=run_id, key=key, count=len(values),
                        steps=_packed(steps), values=_packed(values), times=_packed(times))
    _summarise(chunk, steps, values, times)
    return chunk


def extended(chunk: MetricChunk, points: list[tuple]) -> MetricChunk:
    """The same row (not saved) with `points` added after those it holds."""
    more = metric_chunk(chunk.run_id, chunk.key, points)
    chunk.count += more.count
    chunk.steps, chunk.values, chunk.times = (
        bytes(chunk.steps) + more.steps, bytes(chunk.values) + more.values, bytes(chunk.times) + more.times,
    )
    _summarise(chunk, _unpack("q", chunk.steps), _unpack("d", chunk.values), _unpack("d", chunk.times))
    return chunk


def _packed(items: array) -> bytes:
    if sys.byteorder == "big":  # stored little-endian whatever the machine
        items = array(items.typecode, items)
        items.byteswap()
    return items.tobytes()


# ---------------------------------------------------------------- summaries
#
# Each chunk keeps, beside its points, the lowest and the highest point of every
# block of BLOCK consecutive points (value, step, time and position in the chunk).
# A series far longer than its chart is thinned from these: a million points are
# about 31,000 blocks. Stored as a header (the block size, int64) and eight packed
# arrays of one item a block.

BLOCK = 32
_SUMMARY_ARRAYS = (("low_values", "d"), ("high_values", "d"), ("low_steps", "q"), ("high_steps", "q"),
                   ("low_times", "d"), ("high_times", "d"), ("low_at", "q"), ("high_at", "q"))


def _summarise(chunk: MetricChunk, steps: array, values: array, times: array) -> None:
    """Set the chunk's summary fields from its points."""
    low_at, high_at = array("q"), array("q")
    for start in range(0, len(values), BLOCK):
        block = values[start:start + BLOCK]
        low_at.append(start + block.index(min(block)))
        high_at.append(start + block.index(max(block)))
    columns = {
        "low_values": array("d", [values[i] for i in low_at]), "high_values": array("d", [values[i] for i in high_at]),
        "low_steps": array("q", [steps[i] for i in low_at]), "high_steps": array("q", [steps[i] for i in high_at]),
        "low_times": array("d", [times[i] for i in low_at]), "high_times": array("d", [times[i] for i in high_at]),
        "low_at": low_at, "high_at": high_at,
    }
    chunk.summary = _packed(array("q", [BLOCK])) + b"".join(_packed(columns[name]) for name, _ in _SUMMARY_ARRAYS)
    chunk.stepless = NO_STEP in steps
    given = [step for step in steps if step != NO_STEP] if chunk.stepless else steps
    chunk.step_low, chunk.step_high = (min(given), max(given)) if len(given) else (None, None)
    chunk.time_low, chunk.time_high = (min(times), max(times)) if len(times) else (None, None)


def _unpack_summary(data) -> tuple[int, dict[str, array]]:
    data = bytes(data)
    block = _unpack("q", data[:8])[0]
    blocks = (len(data) - 8) // (8 * len(_SUMMARY_ARRAYS))
    out = {}
    for n, (name, typecode) in enumerate(_SUMMARY_ARRAYS):
        begin = 8 + n * 8 * blocks
        out[name] = _unpack(typecode, data[begin:begin + 8 * blocks])
    return block, out


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

    Thinned, each of max_points / 2 buckets keeps its lowest and highest point.
    Only the chunks holding the range are read; where the range holds far more
    points than the chart, the chunks wholly inside it are read from their
    summaries (each block's lowest and highest point), not point by point.
    """
    if x == "step" and is_system_key(key):
        x = "relative"  # a reading's position would say nothing; its time beside the run's steps does
    chunks = list(MetricChunk.objects.filter(run=run, key=key).order_by("id").values_list(
        "id", "count", "step_low", "step_high", "stepless", "time_low", "time_high"))
    if not chunks:
        return None
    origin = 0.0
    if x == "relative":
        if run.started_at:
            origin = run.started_at.timestamp()
        else:
            first = MetricChunk.objects.filter(pk=chunks[0][0]).values_list("times", flat=True)[0]
            origin = _unpack("d", first)[0]
    zoomed = x_min is not None or x_max is not None
    low = float("-inf") if x_min is None else x_min
    high = float("inf") if x_max is None else x_max

    # Where each chunk lies: outside the range, wholly inside it (and summarised), or to read point by point.
    plan, offset, whole_points = [], 0, 0
    for chunk_id, count, step_low, step_high, stepless, time_low, time_high in chunks:
        if time_low is None:  # stored before summaries: read as it is
            kind = "points"
        else:
            if x == "step":
                ends = [] if step_low is None else [step_low, step_high]
                if stepless:
                    ends += [offset, offset + count - 1]
                first, last = min(ends), max(ends)
            else:
                first, last = time_low - origin, time_high - origin
            if last < low or first > high:
                kind = None
            elif low <= first and last <= high:
                kind = "whole"
                whole_points += count
            else:
                kind = "points"
        if kind:
            plan.append((chunk_id, offset, count, kind))
        offset += count
    buckets = max(1, max_points // 2)
    summarised = whole_points >= 4 * BLOCK * buckets  # a bucket spans several blocks: thin from summaries
    reads = {kind: [chunk_id for chunk_id, _, _, k in plan if (k == "whole" and summarised) == (kind == "summary")]
             for kind in ("summary", "points")}
    fetched = dict(_fetch(run, key, reads["summary"], ("summary",)))
    fetched.update(_fetch(run, key, reads["points"], ("steps", "values", "times")))

    units = _Units()
    for chunk_id, offset, count, kind in plan:
        row = fetched[chunk_id]
        if kind == "whole" and summarised:
            units.add_summary(offset, count, *_unpack_summary(row[0]))
            continue
        steps, values, times = (_unpack(t, data) for t, data in zip("qdd", row))
        if kind == "whole" or not zoomed:
            units.add_points(offset, steps, values, times)
            continue
        if x == "step":
            xs = [offset + i if step == NO_STEP else step for i, step in enumerate(steps)]
        elif x == "relative":
            xs = [at - origin for at in times]
        else:
            xs = times
        kept = [i for i, value in enumerate(xs) if low <= value <= high]
        if len(kept) == len(steps):
            units.add_points(offset, steps, values, times)
        elif kept:
            units.add_points(offset, array("q", [steps[i] for i in kept]), array("d", [values[i] for i in kept]),
                             array("d", [times[i] for i in kept]), array("q", [offset + i for i in kept]))

    total = units.points
    picked = units.thinned(max_points)
    out_x: list = []
    for at, step, when, _ in picked:
        if x == "step":
            out_x.append(at if step == NO_STEP else step)
        elif x == "relative":
            out_x.append(round(when - origin, 3))
        else:
            out_x.append(_iso(when))
    return {"key": key, "x_axis": x, "x": out_x, "y": [value for _, _, _, value in picked],
            "total_points": total, "downsampled": len(picked) < total}


def _fetch(run: Run, key: str, ids: list[int], fields: tuple[str, ...]):
    """(id, fields) of the chunks `ids`, a few hundred a query."""
    for begin in range(0, len(ids), 500):
        part = ids[begin:begin + 500]
        rows = MetricChunk.objects.filter(run=run, key=key, id__gte=part[0], id__lte=part[-1])
        if len(part) < part[-1] - part[0] + 1:
            rows = rows.filter(id__in=part)
        for chunk_id, *data in rows.values_list("id", *fields):
            yield chunk_id, data


class _Units:
    """A series in reading order as units: points, or summarised blocks of points.

    Each unit starts at a position among the points read (`starts`) and has a lowest
    and a highest point, each its position in the whole series, step, time and value.
    """

    def __init__(self):
        self.points = 0
        self.starts = array("q")
        self.low = {"at": array("q"), "step": array("q"), "time": array("d"), "value": array("d")}
        self.high = {"at": array("q"), "step": array("q"), "time": array("d"), "value": array("d")}

    def add_points(self, offset: int, steps: array, values: array, times: array, at: array | None = None) -> None:
        """Points read one by one; `at` their positions in the series (default: from `offset` on)."""
        count = len(values)
        if at is None:
            at = array("q", range(offset, offset + count))
        self.starts.extend(array("q", range(self.points, self.points + count)))
        for side in (self.low, self.high):
            side["at"].extend(at)
            side["step"].extend(steps)
            side["time"].extend(times)
            side["value"].extend(values)
        self.points += count

    def add_summary(self, offset: int, count: int, block: int, summary: dict[str, array]) -> None:
        """A chunk wholly read, from its summary: a unit a block."""
        blocks = len(summary["low_values"])
        self.starts.extend(array("q", range(self.points, self.points + blocks * block, block)))
        for name, side in (("low", self.low), ("high", self.high)):
            side["at"].extend(array("q", [offset + at for at in summary[f"{name}_at"]]))
            side["step"].extend(summary[f"{name}_steps"])
            side["time"].extend(summary[f"{name}_times"])
            side["value"].extend(summary[f"{name}_values"])
        self.points += count

    def thinned(self, max_points: int) -> list[tuple]:
        """(position, step, time, value) of at most max_points points, in order: every point
        if they fit, else each bucket's lowest and highest."""
        low, high = self.low, self.high
        if self.points <= max_points:  # only points were read (summaries are read for far more)
            return list(zip(low["at"], low["step"], low["time"], low["value"]))
        buckets = max(1, max_points // 2)
        picked = []
        total = self.points
        begin = 0
        for bucket in range(buckets):
            end = bisect_left(self.starts, (bucket + 1) * total // buckets, begin)
            if end <= begin:
                continue
            values = low["value"][begin:end]
            i = begin + values.index(min(values))
            values = high["value"][begin:end]
            j = begin + values.index(max(values))
            lowest = (low["at"][i], low["step"][i], low["time"][i], low["value"][i])
            highest = (high["at"][j], high["step"][j], high["time"][j], high["value"][j])
            if lowest[0] == highest[0]:
                picked.append(lowest)
            else:
                picked.extend(sorted((lowest, highest)))
            begin = end
        return picked


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
