"""Run logs: stored in numbered chunks, written exactly once, read by line number.

Line numbers start at 1 and never change. A collector appends through LogWriter,
whose every flush is one transaction that inserts a chunk and advances the run's
line count and executor cursor together, guarded by compare-and-swap on the line
count and the collector's lease: a second collector, or one resumed after a crash,
can neither skip nor double a line.
"""

import datetime as dt
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import transaction
from django.db.models import F

from runs import reports, team_secrets
from runs.leases import LeaseLost, lease_expiry, release_lease, renew_lease, take_lease  # noqa: F401 (their old home)
from runs.live import announce_log, announce_progress
from runs.executors.base import LogFrame
from runs.metrics import metric_chunk
from runs.models import LogChunk, MetricChunk, Run

MAX_CHUNK_LINES = 2000
# The end of the output may add a last half line per stream after a full chunk.
CHUNK_LINES_BOUND = MAX_CHUNK_LINES + 2
FLUSH_SECONDS = 0.25
MAX_LINE_BYTES = 1 << 20  # a longer line is stored in parts
STREAM_NAMES = ("stdout", "stderr")


def collapse_carriage_returns(text: str) -> str:
    """A line rewritten with \\r (a progress bar) keeps only its last state."""
    if text.endswith("\r"):
        text = text.rstrip("\r")
    cut = text.rfind("\r")
    return text if cut < 0 else text[cut + 1 :]


class LogWriter:
    def __init__(self, run: Run, owner: str, mask: list[str] = ()):
        self.run_id = run.pk
        self.mask = list(mask)  # secret values: never stored
        self.owner = owner
        self.stored_lines = run.log_lines
        self.cursor = run.log_cursor
        # A line begun but not ended at the last flush, per stream: [time, text].
        self.pending: dict[int, list] = {int(k): v for k, v in (run.log_pending or {}).items()}
        self.lines: list[list] = []
        # Reports taken out of the output since the last flush (runs/reports.py).
        self.points: dict[str, list] = {}  # metric -> [(step, value, time), ...]
        self.point_count = 0
        self.malformed = 0
        self.progress_samples = list(run.progress_samples or [])
        self.progress_changed = False
        self.team_id = run.team_id
        self.first_unflushed_at: float | None = None
        self.flushed_at = time.monotonic()

    def add(self, frame: LogFrame) -> None:
        text = frame.data.decode("utf-8", "replace")
        self.cursor = frame.cursor
        if self.first_unflushed_at is None:
            self.first_unflushed_at = frame.time or 0.0
        started = self.pending.pop(frame.stream, None)
        if started is not None:
            at, text = started[0], started[1] + text
        else:
            at = frame.time
        if text.endswith("\n"):
            self._append(at, frame.stream, text[:-1])
            return
        # Keep a half line short while it is rewritten in place.
        cut = text.rfind("\r", 0, len(text) - 1)
        if cut >= 0:
            text = text[cut + 1 :]
        if len(text.encode()) > MAX_LINE_BYTES:
            self._append(at, frame.stream, text)
        else:
            self.pending[frame.stream] = [at, text]

    def _append(self, at: float, stream: int, text: str) -> None:
        text = collapse_carriage_returns(text)
        if reports.is_report(text):
            try:
                self._take_report(at, reports.parse(text))
                return
            except reports.Malformed:
                self.malformed += 1  # kept in the log below, where the user can see it
        if self.mask:
            text = team_secrets.mask(text, self.mask)
        self.lines.append([round(at, 6), stream, text])

    def _take_report(self, at: float, report: reports.Report) -> None:
        for key, value in report.metrics.items():
            self.points.setdefault(key, []).append((report.step, value, at))
        self.point_count += len(report.metrics)
        if report.progress is not None:
            self.progress_samples = reports.add_progress_sample(self.progress_samples, at, report.progress)
            self.progress_changed = True

    def due(self) -> bool:
        if not self.lines and self.first_unflushed_at is None:
            return False
        return len(self.lines) + self.point_count >= MAX_CHUNK_LINES or time.monotonic() - self.flushed_at >= FLUSH_SECONDS

    def end_pending_lines(self) -> None:
        """The output ended: a last line without a newline is still a line."""
        for stream, (at, text) in sorted(self.pending.items()):
            self._append(at, stream, text)
        self.pending.clear()

    def flush(self) -> None:
        """Store what was added, with the cursor after it, in one transaction."""
        # The collector flushes as soon as due(): a chunk never passes the reader's bound.
        assert len(self.lines) <= CHUNK_LINES_BOUND
        reported = {}
        if self.progress_changed:
            reported = {"progress": self.progress_samples[-1][1], "progress_samples": self.progress_samples}
        if self.malformed:
            reported["reports_malformed"] = F("reports_malformed") + self.malformed
        with transaction.atomic():
            advanced = Run.objects.filter(pk=self.run_id, log_lines=self.stored_lines, lease_owner=self.owner).update(
                log_lines=self.stored_lines + len(self.lines),
                log_cursor=self.cursor,
                log_pending={str(k): [at, team_secrets.mask(text, self.mask)] for k, (at, text) in self.pending.items()},
                lease_until=lease_expiry(),
                **reported,
            )
            if not advanced:
                raise LeaseLost(self.run_id)
            if self.lines:
                LogChunk.objects.create(
                    run_id=self.run_id, first_line=self.stored_lines + 1, line_count=len(self.lines), lines=self.lines
                )
            if self.points:
                MetricChunk.objects.bulk_create(
                    metric_chunk(self.run_id, key, points) for key, points in self.points.items()
                )
        self.stored_lines += len(self.lines)
        if self.lines:
            announce_log(self.run_id, self.stored_lines)
        if self.progress_changed:
            announce_progress(self.run_id, self.team_id, self.progress_samples)
        self.lines, self.points, self.point_count = [], {}, 0
        self.malformed = 0
        self.progress_changed = False
        self.first_unflushed_at = None
        self.flushed_at = time.monotonic()


def read_lines(run: Run, after: int = 0, limit: int = 1000) -> dict:
    """Lines after line `after`, at most `limit`: the API's logs page."""
    after = max(0, after)
    limit = max(1, min(limit, 10000))
    chunks = LogChunk.objects.filter(
        run=run, first_line__gt=after - CHUNK_LINES_BOUND, first_line__lte=after + limit
    ).order_by("first_line")
    out = []
    for chunk in chunks:
        for offset, (at, stream, text) in enumerate(chunk.lines):
            n = chunk.first_line + offset
            if n <= after:
                continue
            if len(out) >= limit:
                break
            out.append({"n": n, "t": _iso(at), "stream": STREAM_NAMES[stream], "text": text})
    next_after = out[-1]["n"] if out else after
    return {"lines": out, "next": next_after, "complete": run.log_complete and next_after >= run.log_lines}


def iter_text(run: Run) -> Iterator[str]:
    """The whole log as text, a chunk at a time."""
    last = 0
    while True:
        chunks = list(LogChunk.objects.filter(run=run, first_line__gt=last).order_by("first_line")[:20])
        if not chunks:
            return
        for chunk in chunks:
            yield "".join(text + "\n" for _, _, text in chunk.lines)
        last = chunks[-1].first_line


def _iso(unix_time: float) -> str:
    return dt.datetime.fromtimestamp(unix_time, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def search(run: Run, query: str, after: int = 0, limit: int = 200) -> dict:
    """Lines containing `query` (case-insensitive), after line `after`: the whole
    stored log is searched on the server, not just what a page has loaded."""
    needle = query.lower()
    hits: list[dict] = []
    last_scanned = after
    chunks = LogChunk.objects.filter(run=run, first_line__gt=after - CHUNK_LINES_BOUND).order_by("first_line")
    for chunk in chunks.iterator(chunk_size=50):
        for offset, (at, stream, text) in enumerate(chunk.lines):
            n = chunk.first_line + offset
            if n <= after:
                continue
            last_scanned = n
            if needle in text.lower():
                hits.append({"n": n, "t": _iso(at), "stream": STREAM_NAMES[stream], "text": text})
                if len(hits) >= limit:
                    return {"hits": hits, "next": n, "done": False}
    return {"hits": hits, "next": last_scanned, "done": True}
