"""Reading a run's metrics: the keys, and one series thinned for a chart.

A chart has a few hundred pixels across; a run may report 100,000 points or
more. A series is cut into buckets and each keeps its lowest and highest point,
so spikes and dips survive thinning, and a zoomed-in range is read again at
full detail.
"""

import datetime as dt
import sys
from array import array
from bisect import bisect_right

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
    # A column at a time: zip(*points) would unpack every point as an argument.
    return metric_chunk_of(run_id, key, [point[0] for point in points], [point[1] for point in points],
                           [point[2] for point in points])


def metric_chunk_of(run_id: int, key: str, steps: list, values: list, times: list) -> MetricChunk:
    """metric_chunk for points given as columns: steps (None where not given), values, times."""
    if None in steps:
        steps = [NO_STEP if step is None else step for step in steps]
    chunk = MetricChunk(run_id=run_id, key=key, count=len(values), steps=_packed(array("q", steps)),
                        values=_packed(array("d", values)), times=_packed(array("d", times)))
    _summarise(chunk, steps, values, times)
    return chunk


def extended(chunk: MetricChunk, steps: list, values: list, times: list) -> MetricChunk:
    """The same row (not saved) with points added after those it holds, given as
    metric_chunk_of takes them."""
    more = metric_chunk_of(chunk.run_id, chunk.key, steps, values, times)
    chunk.count += more.count
    chunk.steps, chunk.values, chunk.times = (
        bytes(chunk.steps) + more.steps, bytes(chunk.values) + more.values, bytes(chunk.times) + more.times,
    )
    _summarise(chunk, _unpack("q", chunk.steps).tolist(), _unpack("d", chunk.values).tolist(),
               _unpack("d", chunk.times).tolist())
    return chunk


def _packed(items: array) -> bytes:
    if sys.byteorder == "big":  # stored little-endian whatever the machine
        items = array(items.typecode, items)
        items.byteswap()
    return items.tobytes()


# ---------------------------------------------------------------- summaries
#
# Each chunk keeps, beside its points, the lowest and the highest point of every
# block of BLOCK consecutive points (value, step, time and position in the chunk),
# and again of every block of COARSE points. A series far longer than its chart is
# thinned from these: a million points are about 31,000 blocks, or 4,000 coarse
# ones. Each is stored as a header (the block size, int64) and eight packed arrays
# of one item a block.

BLOCK = 32
COARSE = 256
_SUMMARY_ARRAYS = (("low_values", "d"), ("high_values", "d"), ("low_steps", "q"), ("high_steps", "q"),
                   ("low_times", "d"), ("high_times", "d"), ("low_at", "q"), ("high_at", "q"))


def _summarise(chunk: MetricChunk, steps: list[int], values: list[float], times: list[float]) -> None:
    """Set the chunk's summary fields from its points (lists: an array makes an object
    of each item it is asked for; NO_STEP where a point has no step)."""
    low_at, high_at = array("q"), array("q")
    for start in range(0, len(values), BLOCK):
        block = values[start:start + BLOCK]
        low_at.append(start + block.index(min(block)))
        high_at.append(start + block.index(max(block)))
    chunk.summary = _summary(BLOCK, low_at, high_at, steps, values, times)
    # The coarse blocks from the fine ones: the first lowest of the lowest is the block's first lowest.
    per = COARSE // BLOCK
    coarse_low, coarse_high = array("q"), array("q")
    for start in range(0, len(low_at), per):
        lows = [values[at] for at in low_at[start:start + per]]
        coarse_low.append(low_at[start + lows.index(min(lows))])
        highs = [values[at] for at in high_at[start:start + per]]
        coarse_high.append(high_at[start + highs.index(max(highs))])
    chunk.summary_coarse = _summary(COARSE, coarse_low, coarse_high, steps, values, times)
    chunk.stepless = NO_STEP in steps
    given = [step for step in steps if step != NO_STEP] if chunk.stepless else steps
    chunk.step_low, chunk.step_high = (min(given), max(given)) if given else (None, None)
    chunk.time_low, chunk.time_high = (min(times), max(times)) if times else (None, None)


def _summary(block: int, low_at: array, high_at: array, steps: list, values: list, times: list) -> bytes:
    columns = {
        "low_values": array("d", [values[i] for i in low_at]), "high_values": array("d", [values[i] for i in high_at]),
        "low_steps": array("q", [steps[i] for i in low_at]), "high_steps": array("q", [steps[i] for i in high_at]),
        "low_times": array("d", [times[i] for i in low_at]), "high_times": array("d", [times[i] for i in high_at]),
        "low_at": low_at, "high_at": high_at,
    }
    return _packed(array("q", [block])) + b"".join(_packed(columns[name]) for name, _ in _SUMMARY_ARRAYS)


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
    # Where a bucket spans a few blocks or more, the chunks wholly in range are thinned from their summaries.
    buckets = max(1, max_points // 2)
    summary = next((field for field, block in (("summary_coarse", COARSE), ("summary", BLOCK))
                    if whole_points >= 2 * block * buckets), None)
    summarised = summary is not None
    reads = {kind: [chunk_id for chunk_id, _, _, k in plan if (k == "whole" and summarised) == (kind == "summary")]
             for kind in ("summary", "points")}
    fetched = dict(_fetch(run, key, reads["summary"], (summary,)))
    fetched.update(_fetch(run, key, reads["points"], ("steps", "values", "times")))

    units = _Units()
    for chunk_id, offset, count, kind in plan:
        row = fetched[chunk_id]
        if kind == "whole" and summarised:
            units.add_summary(offset, count, row[0])
            continue
        if kind == "whole" or not zoomed:
            units.add_points(offset, *row, _positions(count))
            continue
        steps, values, times = (_unpack(t, data) for t, data in zip("qdd", row))
        if x == "step":
            xs = [offset + i if step == NO_STEP else step for i, step in enumerate(steps)] if NO_STEP in steps else steps
        elif x == "relative":
            xs = [at - origin for at in times]
        else:
            xs = times
        kept = [i for i, value in enumerate(xs) if low <= value <= high]
        if len(kept) == count:
            units.add_points(offset, *row, _positions(count))
        elif kept:
            units.add_points(offset, _packed(array("q", [steps[i] for i in kept])),
                             _packed(array("d", [values[i] for i in kept])),
                             _packed(array("d", [times[i] for i in kept])), _packed(array("q", kept)))

    total = units.points
    at, steps, times, values = units.thinned(max_points)
    if x == "step":
        out_x = [a if step == NO_STEP else step for a, step in zip(at(), steps)] if NO_STEP in steps else steps
    elif x == "relative":
        out_x = [round(when - origin, 3) for when in times]
    else:
        out_x = [_iso(when) for when in times]
    return {"key": key, "x_axis": x, "x": out_x, "y": values,
            "total_points": total, "downsampled": len(values) < total}


def _fetch(run: Run, key: str, ids: list[int], fields: tuple[str, ...]):
    """(id, fields) of the chunks `ids`, a few hundred a query."""
    for begin in range(0, len(ids), 500):
        part = ids[begin:begin + 500]
        rows = MetricChunk.objects.filter(run=run, key=key, id__gte=part[0], id__lte=part[-1])
        if len(part) < part[-1] - part[0] + 1:
            rows = rows.filter(id__in=part)
        for chunk_id, *data in rows.values_list("id", *fields):
            yield chunk_id, data


_POSITIONS = b""


def _positions(count: int) -> bytes:
    """0, 1, ... count - 1, packed."""
    global _POSITIONS
    if len(_POSITIONS) < 8 * count:
        _POSITIONS = _packed(array("q", range(max(count, 4096))))
    return _POSITIONS[:8 * count]


class _Units:
    """What was read of a series, in order, as units: points read one by one, and the
    blocks of the chunks read from their summaries. A unit has a lowest and a highest
    point (the same one for a point read): its value, step, time and position.

    The units are gathered as packed pieces and unpacked once, an array a field; a
    segment (a chunk, or the points of one read) says where its units lie:
    (first point among those read, first unit, units, points a unit, chunk's position in the series).
    """

    def __init__(self):
        self.points = 0
        self.units = 0
        self.pieces: dict[str, list] = {name: [] for name, _ in _SUMMARY_ARRAYS}
        self.segments: list[tuple[int, int, int, int, int]] = []

    def add_summary(self, offset: int, count: int, data) -> None:
        """A chunk wholly in range, from its summary."""
        data = memoryview(data)
        block = int.from_bytes(data[:8], "little")
        blocks = (len(data) - 8) // (8 * len(_SUMMARY_ARRAYS))
        for n, (name, _) in enumerate(_SUMMARY_ARRAYS):
            self.pieces[name].append(data[8 + n * 8 * blocks:8 + (n + 1) * 8 * blocks])
        self._segment(offset, count, blocks, block)

    def add_points(self, offset: int, steps, values, times, at: bytes) -> None:
        """Points of a chunk at `offset`, packed; `at` their positions in the chunk."""
        for name, piece in (("values", values), ("steps", steps), ("times", times), ("at", at)):
            self.pieces[f"low_{name}"].append(piece)
            self.pieces[f"high_{name}"].append(piece)
        count = len(at) // 8
        self._segment(offset, count, count, 1)

    def _segment(self, offset: int, count: int, units: int, per_unit: int) -> None:
        self.segments.append((self.points, self.units, units, per_unit, offset))
        self.points += count
        self.units += units

    def _first_unit_from(self, point: int, firsts: list[int]) -> int:
        """The first unit starting at or after `point` (a position among the points read)."""
        if point >= self.points:
            return self.units
        first_point, first_unit, units, per_unit, _ = self.segments[bisect_right(firsts, point) - 1]
        return first_unit + min(units, -(-(point - first_point) // per_unit))

    def thinned(self, max_points: int) -> list[tuple]:
        """At most max_points points, in order: every point if they fit, else each bucket's
        lowest and highest. As lists of their steps, times and values, with a function
        giving their positions in the series."""
        field = {name: _unpack(typecode, b"".join(self.pieces[name])) for name, typecode in _SUMMARY_ARRAYS}
        unit_firsts = [segment[1] for segment in self.segments]

        def point(side: str, unit: int) -> tuple:
            offset = self.segments[bisect_right(unit_firsts, unit) - 1][4]
            return (offset + field[f"{side}_at"][unit], field[f"{side}_steps"][unit],
                    field[f"{side}_times"][unit], field[f"{side}_values"][unit])

        if self.points <= max_points:  # only points were read (summaries are read for far more)
            def positions() -> list[int]:
                out = []
                for _, first, units, _, offset in self.segments:
                    out.extend(offset + at for at in field["low_at"][first:first + units])
                return out

            return positions, *(field[name].tolist() for name in ("low_steps", "low_times", "low_values"))
        buckets = max(1, max_points // 2)
        point_firsts = [segment[0] for segment in self.segments]
        lows, highs = field["low_values"], field["high_values"]
        picked = []
        begin = 0
        for bucket in range(buckets):
            end = self._first_unit_from((bucket + 1) * self.points // buckets, point_firsts)
            if end <= begin:
                continue
            values = lows[begin:end]
            lowest = point("low", begin + values.index(min(values)))
            values = highs[begin:end]
            highest = point("high", begin + values.index(max(values)))
            if lowest[0] == highest[0]:
                picked.append(lowest)
            else:
                picked.extend(sorted((lowest, highest)))
            begin = end
        return (lambda: [p[0] for p in picked]), *([p[n] for p in picked] for n in (1, 2, 3))


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
