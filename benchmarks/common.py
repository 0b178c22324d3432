"""What every benchmark section shares: a measured row, the sizes of a scale, timing.

A row sets Runyard's time against a floor measured in the same run (the raw thing
any tool would stand on: a bare Docker client, one indexed query, a raw exec)
and says whether it meets its goal. Nothing here asserts a time: the bench
reports, it never fails on speed.
"""

import os
import statistics
import threading
import time
from dataclasses import dataclass, field

SCALES = {
    # small: a quick look (about five minutes); full: the sizes of issue 11's table.
    "small": {"log_lines": 100_000, "metric_points": 100_000, "metric_read_points": 200_000,
              "run_counts": [20_000], "socket_lines": 3_000, "repeats": 3, "echoes": 50},
    "full": {"log_lines": 1_000_000, "metric_points": 1_000_000, "metric_read_points": 1_000_000,
             "run_counts": [100_000, 1_000_000], "socket_lines": 20_000, "repeats": 3, "echoes": 200},
}

IMAGE = "runyard/busybox:latest"


@dataclass
class Row:
    """One measured path: Runyard's `ours` against the `floor`, both in seconds
    (a time per operation, or the time of the whole job) unless `unit` says
    otherwise. The goal is one of: `max_ratio` (ours / floor at most this),
    `max_seconds` (ours at most this) or `min_rate` (`rate` at least this)."""

    name: str
    size: str
    floor: float
    ours: float
    floor_what: str
    max_ratio: float | None = None
    max_seconds: float | None = None
    min_rate: float | None = None
    rate: float | None = None  # items a second, where the goal is a rate
    rate_unit: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours / self.floor if self.floor > 0 else float("inf")

    @property
    def goal(self) -> str:
        if self.max_ratio is not None:
            return f"≤ {self.max_ratio:g}× floor"
        if self.max_seconds is not None:
            return f"< {_duration(self.max_seconds)}"
        return f"≥ {self.min_rate:,.0f} {self.rate_unit}"

    @property
    def met(self) -> bool:
        if self.max_ratio is not None:
            return self.ratio <= self.max_ratio
        if self.max_seconds is not None:
            return self.ours < self.max_seconds
        return (self.rate or 0) >= self.min_rate

    @property
    def shown(self) -> str:
        """Runyard's figure as the table shows it."""
        text = _duration(self.ours)
        if self.rate is not None:
            text += f" ({self.rate:,.0f} {self.rate_unit})"
        return text

    def as_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "floor_s": self.floor, "ours_s": self.ours,
                "floor_what": self.floor_what, "ratio": self.ratio, "goal": self.goal, "met": self.met,
                "rate": self.rate, "rate_unit": self.rate_unit, "notes": self.notes}


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1_000_000:.0f} µs"


def scale_name() -> str:
    name = os.environ.get("BENCH_SCALE", "small")
    if name not in SCALES:
        raise SystemExit(f"BENCH_SCALE must be one of {', '.join(SCALES)}, not {name!r}")
    return name


def timed(fn, repeat: int = 20) -> float:
    """The median time of `repeat` calls of fn."""
    return statistics.median(samples(fn, repeat))


def samples(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by the nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class PeakRSS:
    """The highest resident memory of this process while the block runs, above
    what it held when the block began (read from /proc every 20 ms)."""

    def __enter__(self):
        self.base = _rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.base) / (1 << 20)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
