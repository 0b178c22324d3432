"""Run logs: stored in numbered chunks, written exactly once, read by line number.

Line numbers start at 1 and never change. A collector appends through LogWriter,
whose every flush is one transaction that inserts a chunk and advances the run's
line count and executor cursor together, guarded by compare-and-swap on the line
count and the collector's lease: a second collector, or one resumed after a crash,
can neither skip nor double a line.
"""

import datetime as dt
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Max

from runs import reports, team_secrets
from runs.leases import LeaseLost, lease_expiry, release_lease, renew_lease, take_lease  # noqa: F401 (their old home)
from runs.live import announce_log, announce_progress
from runs.executors.base import LineRun, LogFrame
from runs.metrics import extended, metric_chunk_of
from runs.models import LogChunk, MetricChunk, Run
from runs.system_metrics import is_system_key

MAX_CHUNK_LINES = 2000
# Reported points stored in one flush (a metric chunk row each key holds them packed, 24 bytes a point).
MAX_CHUNK_POINTS = 20_000
# The end of the output may add a last half line per stream after a full chunk.
CHUNK_LINES_BOUND = MAX_CHUNK_LINES + 2
# A chunk row is read whole: keep it about this size (plus a line or two).
MAX_CHUNK_BYTES = 1 << 20
FLUSH_SECONDS = 0.1  # a printed line reaches a watching browser within about this much more
# A system reading (sys/...) comes every few seconds, a flush or two apart: its points
# go on in the key's open chunk, not a row each, up to an hour of them at the default
# 5 s (about 17 KB a row, rewritten with each reading).
SYSTEM_CHUNK_POINTS = 720
# Ends a line cut at RUNYARD_LOG_LINE_MAX_BYTES; the number is what was not kept.
TRUNCATED_MARKER = "… [truncated {} bytes]"
REPORT_START = reports.PREFIX.encode()  # a line that begins so may be a report
STREAM_NAMES = ("stdout", "stderr")


def collapse_carriage_returns(text: str) -> str:
    """A line rewritten with \\r (a progress bar) keeps only its last state."""
    if text.endswith("\r"):
        text = text.rstrip("\r")
    cut = text.rfind("\r")
    return text if cut < 0 else text[cut + 1 :]


class LogWriter:
    """Turns a run's output frames into stored lines and reports.

    Each line is masked first (the run's secret values, runs.team_secrets), then
    cut at RUNYARD_LOG_LINE_MAX_BYTES with a visible marker, and only then looked
    at as a report: no secret reaches a metric's name, and no report is read
    from a cut line.
    """

    def __init__(self, run: Run, owner: str, mask: list[str] = (), background: bool = False):
        self.run_id = run.pk
        self.background = background  # full chunks stored by a flusher thread (flush)
        self._flusher: _Flusher | None = None
        self.mask = sorted(set(mask), key=len, reverse=True)  # secret values: never stored
        self.owner = owner
        self.stored_lines = run.log_lines
        self.cursor = run.log_cursor
        self.line_cap = settings.RUNYARD_LOG_LINE_MAX_BYTES
        # A line is held this far past the cap until it is masked, so a secret
        # that crosses the cap is seen whole.
        self.held_bytes = self.line_cap + max((len(value.encode()) for value in self.mask), default=0)
        # A line begun but not ended at the last flush, per stream:
        # [time, text, bytes cut off past the cap (0: none)].
        self.pending: dict[int, list] = {int(k): _pending_entry(v) for k, v in (run.log_pending or {}).items()}
        self.lines: list[list] = []
        self.line_bytes = 0
        # Reports taken out of the output since the last flush (runs/reports.py).
        self.points: dict[str, tuple[list, list, list]] = {}  # metric -> its steps, values and times
        self.point_count = 0
        self.malformed = 0
        self.metric_keys_max = settings.RUNYARD_METRIC_KEYS_MAX
        # The run's own names: the system's (sys/...) are not the run's to count.
        stored = MetricChunk.objects.filter(run_id=run.pk).values_list("key", flat=True).distinct()
        self.metric_keys = {key for key in stored if not is_system_key(key)}
        self.progress_samples = list(run.progress_samples or [])
        self.progress_changed = False
        self.summary = dict(run.summary or {})
        self.metrics_last = dict(run.metrics_last or {})  # the runs list's metric columns
        self.summary_changed = False
        self.team_id = run.team_id
        self.first_unflushed_at: float | None = None
        self.flushed_at = time.monotonic()
        # Per system metric, the chunk this writer stored last and may still add to.
        self.open_chunks: dict[str, MetricChunk] = {}

    def add(self, frame: LogFrame) -> None:
        text = frame.data.decode("utf-8", "replace")
        self.cursor = frame.cursor
        if self.first_unflushed_at is None:
            self.first_unflushed_at = frame.time or 0.0
        started = self.pending.pop(frame.stream, None)
        if started is not None:
            at, held, cut_off = started
        else:
            at, held, cut_off = frame.time, "", 0
        ended = text.endswith("\n")
        if ended:
            text = text[:-1]
        if not cut_off:
            text, held = held + text, ""
        # Rewritten in place with \r (a progress bar): only the last state counts.
        # A \r at the very end of a half line may be half of a \r\n: it stays.
        rewrite = text.rstrip("\r").rfind("\r") if ended else text.rfind("\r", 0, len(text) - 1)
        if rewrite >= 0:
            text, held, cut_off = text[rewrite + 1 :], "", 0
        if cut_off:  # already past the cap: only count what is cut off
            cut_off += len(text.encode())
            text = held
        else:
            size = len(text.encode())
            if size > self.held_bytes:
                kept = text.encode()[: self.held_bytes].decode("utf-8", "ignore")
                cut_off, text = size - len(kept.encode()), kept
        if ended:
            self._append(at, frame.stream, text, cut_off)
        else:
            self.pending[frame.stream] = [at, text, cut_off]

    def add_frames(self, batch: list[LogFrame | LineRun]) -> None:
        """Frames in order, as add() takes them, flushing whenever a chunk is full; a
        LineRun as its frames one by one.

        The common line (whole, plain ASCII, no \r, under the cap, not a report, no
        secrets to mask, nothing half-read before it on its stream) is stored here as
        it comes, and a LineRun of such lines, or of one metric's usual reports, at
        once; any other goes through add()."""
        if not batch:
            return
        if LineRun not in map(type, batch):
            self._add_frames(batch)
            return
        frames = []
        for item in batch:
            if type(item) is not LineRun:
                frames.append(item)
                continue
            if frames:
                self._add_frames(frames)
                frames = []
            if self.first_unflushed_at is None:
                self.first_unflushed_at = item.time or 0.0
            if not self._take_line_run(item):
                self._add_frames(item.frames())
        if frames:
            self._add_frames(frames)

    def _add_frames(self, frames: list[LogFrame]) -> None:
        if self.first_unflushed_at is None:
            self.first_unflushed_at = frames[0].time or 0.0
        plain_max = self.line_cap if not self.mask else -1  # with secrets, every line is masked in add()
        pending, append = self.pending, self.lines.append
        metrics_last, metric_keys = self.metrics_last, self.metric_keys
        plain_metric = reports.plain_metric
        # Whether any frame may hold a \r or a byte past ASCII: asked of them all at once.
        clean = len(frames) > 1 and (blob := b"".join([frame[3] for frame in frames])).isascii() and b"\r" not in blob
        if (clean and not pending and plain_max >= 0 and blob.startswith(REPORT_START)
                and self._take_plain_reports(frames, blob)):
            return
        cursor = self.cursor
        for index, frame in enumerate(frames):
            cursor, at, stream, data = frame
            size = len(data) - 1
            if (size > plain_max or not data.endswith(b"\n") or (pending and stream in pending)
                    or not (clean or (data.isascii() and b"\r" not in data))):
                self.add(frame)
                append = self.lines.append
            elif not data.startswith(REPORT_START):
                append([round(at, 6), stream, data[:-1].decode("ascii")])
                self.line_bytes += size
            elif (one := plain_metric(data, metric_keys)) is not None:
                step, key, value = one  # the commonest report, one metric: _take_metrics, inline
                steps, values, times = self._series(key)
                steps.append(step)
                values.append(value)
                times.append(at)
                metrics_last[key] = value
                self.point_count += 1
            else:
                text = data[:-1].decode("ascii")
                plain = reports.plain_metrics(text, metric_keys, self.metric_keys_max)
                if plain is None:
                    self._store(at, stream, text, size, cut=False)
                else:
                    self._take_metrics(at, *plain)
            if self._full():
                self.cursor = cursor
                self.flush(wait=False)
                append = self.lines.append
                if index + 1 < len(frames):
                    self.first_unflushed_at = frames[index + 1].time or 0.0
        self.cursor = cursor

    def _take_plain_reports(self, frames: list[LogFrame], blob: bytes) -> bool:
        """A batch of whole lines that are all the commonest report of one known metric
        (reports.plain_metric_lines), taken as add_frames takes them one by one,
        flushing where a chunk fills; False, taking nothing, for any other batch."""
        if blob.count(b"\n") != len(frames) or not all([frame[3].endswith(b"\n") for frame in frames]):
            return False  # a frame that is not one whole line
        if self.line_cap < reports.PLAIN_ONE_MAX_BYTES and max([len(frame[3]) for frame in frames]) > self.line_cap + 1:
            return False  # a line past the cap: cut, and so no report
        read = reports.plain_metric_lines(blob, self.metric_keys)
        if read is None:
            return False
        key, steps, values = read
        self._take_points(key, steps, values, [frame[1] for frame in frames], lambda index: frames[index][0])
        return True

    def _take_points(self, key: str, steps: list, values: list, times, cursor_of) -> None:
        """One metric's points in order, flushing where a chunk fills; `cursor_of(i)`:
        the cursor after the line of point i."""
        start, count = 0, len(values)
        while start < count:
            stop = min(count, start + max(1, MAX_CHUNK_POINTS - self.point_count))
            taken_steps, taken_values, taken_times = self._series(key)
            taken_steps.extend(steps[start:stop])
            taken_values.extend(values[start:stop])
            taken_times.extend(times[start:stop])
            self.point_count += stop - start
            self.metrics_last[key] = values[stop - 1]
            self.cursor = cursor_of(stop - 1)
            if self.point_count >= MAX_CHUNK_POINTS:
                self.flush(wait=False)
                if stop < count:
                    self.first_unflushed_at = times[stop] or 0.0
            start = stop

    def _take_line_run(self, run: LineRun) -> bool:
        """A LineRun taken whole, where it is the common case: plain ASCII lines under
        the cap, no secrets to mask, nothing half-read before it on its stream; and
        either none of them a report, or all the commonest report of one known metric
        (reports.plain_metric_lines). False, taking nothing, for any other."""
        data, count = run.data, run.count
        if self.mask or run.stream in self.pending or not data.isascii():
            return False
        if len(data) > self.line_cap + 1 and max(map(len, data.split(b"\n"))) > self.line_cap:
            return False  # a line past the cap: cut, with a marker (add)
        if data.startswith(REPORT_START):
            read = reports.plain_metric_lines(data, self.metric_keys)
            if read is None or len(read[1]) != count:
                return False
            key, steps, values = read
            self._take_points(key, steps, values, [run.time] * count, run.cursor_of)
            return True
        if b"\n" + REPORT_START in data:
            return False  # some lines are reports, some are not: each read alone
        texts = data.decode("ascii").split("\n")
        texts.pop()  # what follows the last newline
        at, stream = round(run.time, 6), run.stream
        start = 0
        while start < count:
            stop = min(count, start + max(1, MAX_CHUNK_LINES - len(self.lines)))
            # Each line's size added to what the chunk holds: where it fills by size, it ends at that line.
            sizes = list(accumulate(map(len, texts[start:stop]), initial=self.line_bytes))
            if sizes[-1] >= MAX_CHUNK_BYTES:
                stop = start + bisect_left(sizes, MAX_CHUNK_BYTES)
            self.lines.extend([[at, stream, text] for text in texts[start:stop]])
            self.line_bytes = sizes[stop - start]
            self.cursor = run.cursor_of(stop - 1)
            if self._full():
                self.flush(wait=False)
                if stop < count:
                    self.first_unflushed_at = run.time or 0.0
            start = stop
        return True

    def _append(self, at: float, stream: int, text: str, cut_off: int = 0) -> None:
        text = collapse_carriage_returns(text)
        if self.mask:
            text = team_secrets.mask(text, self.mask)
        size = len(text.encode())
        cut = bool(cut_off) or size > self.line_cap
        if cut:
            if cut_off and self.mask:  # a secret's beginning where the held part ends
                text = team_secrets.without_partial_value_at_end(text, self.mask)
            kept = text.encode()[: self.line_cap].decode("utf-8", "ignore")
            text = kept + TRUNCATED_MARKER.format(cut_off + size - len(kept.encode()))
            size = len(text.encode())
        self._store(at, stream, text, size, cut)

    def _store(self, at: float, stream: int, text: str, size: int, cut: bool) -> None:
        """A line as it is to be kept (masked, cut, `size` bytes): a report's values, or a line."""
        if reports.is_report(text):
            try:
                if cut:
                    raise reports.Malformed("the line is longer than the line cap")
                self._take_report(at, reports.parse(text, max_metrics=self.metric_keys_max))
                return
            except reports.Malformed:
                self.malformed += 1  # kept in the log below, where the user can see it
        self.lines.append([round(at, 6), stream, text])
        self.line_bytes += size

    def _take_report(self, at: float, report: reports.Report) -> None:
        metrics = report.metrics
        new_keys = () if metrics.keys() <= self.metric_keys else metrics.keys() - self.metric_keys
        if len(self.metric_keys) + len(new_keys) > self.metric_keys_max:
            raise reports.Malformed(f"the run would have more than {self.metric_keys_max} metrics")
        new_names = report.summary.keys() - self.summary.keys() if report.summary else ()
        if len(self.summary) + len(new_names) > self.metric_keys_max:
            raise reports.Malformed(f"the run's summary would have more than {self.metric_keys_max} names")
        if report.summary:
            self.summary.update(report.summary)
            self.summary_changed = True
        if new_keys:
            self.metric_keys |= new_keys
        self._take_metrics(at, report.step, metrics)
        if report.progress is not None:
            self.progress_samples = reports.add_progress_sample(self.progress_samples, at, report.progress)
            self.progress_changed = True

    def _take_metrics(self, at: float, step: int | None, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            steps, values, times = self._series(key)
            steps.append(step)
            values.append(value)
            times.append(at)
        self.metrics_last.update(metrics)
        self.point_count += len(metrics)

    def add_system_metrics(self, at: float, metrics: dict[str, float]) -> None:
        """A reading of what the run uses (runs.system_metrics), stored with the next flush."""
        for key, value in metrics.items():
            steps, values, times = self._series(key)
            steps.append(None)
            values.append(value)
            times.append(at)
        self.point_count += len(metrics)
        if self.first_unflushed_at is None:
            self.first_unflushed_at = at

    def _series(self, key: str) -> tuple[list, list, list]:
        """The steps, values and times of `key` taken since the last flush."""
        series = self.points.get(key)
        if series is None:
            series = self.points[key] = ([], [], [])
        return series

    def _full(self) -> bool:
        """Whether what was taken since the last flush fills a chunk."""
        return (len(self.lines) >= MAX_CHUNK_LINES or self.point_count >= MAX_CHUNK_POINTS
                or self.line_bytes >= MAX_CHUNK_BYTES)

    def due(self) -> bool:
        if not self.lines and self.first_unflushed_at is None:
            return False
        return self._full() or time.monotonic() - self.flushed_at >= FLUSH_SECONDS

    def end_pending_lines(self) -> None:
        """The output ended: a last line without a newline is still a line."""
        for stream, (at, text, cut_off) in sorted(self.pending.items()):
            self._append(at, stream, text, cut_off)
        self.pending.clear()

    def flush(self, wait: bool = True) -> None:
        """Store what was added, with the cursor after it, in one transaction.

        wait=False, for a writer made with `background` on: the transaction is left to
        its flusher thread (one at a time, in order) while the caller reads on, and
        a failure there (LeaseLost) is raised by the next flush. wait=True returns
        once everything added so far is stored."""
        # The collector flushes as soon as due(): a chunk never passes the reader's bound.
        assert len(self.lines) <= CHUNK_LINES_BOUND
        batch = self._take_batch()
        if wait or not self.background:
            if self._flusher is not None:
                self._flusher.drain()
            self._store_batch(batch)
            return
        if self._flusher is None:
            self._flusher = _Flusher(self._store_batch, self.run_id)
        self._flusher.submit(batch)

    def close(self) -> None:
        """End the flusher thread, if there is one, once what it holds is stored or has failed."""
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def _take_batch(self) -> dict:
        """What a flush stores, taken out of the writer (which goes on empty)."""
        reported = {}
        if self.progress_changed:
            reported = {"progress": self.progress_samples[-1][1], "progress_samples": list(self.progress_samples)}
        if self.summary_changed:
            reported["summary"] = dict(self.summary)
        if self.points:
            reported["metrics_last"] = dict(self.metrics_last)
        if self.malformed:
            reported["reports_malformed"] = F("reports_malformed") + self.malformed
        pending = {
            str(k): [at, team_secrets.mask(text, self.mask), cut_off] for k, (at, text, cut_off) in self.pending.items()
        }
        batch = {"after": self.stored_lines, "lines": self.lines, "points": self.points, "cursor": self.cursor,
                 "pending": pending, "reported": reported,
                 "progress": reported["progress_samples"] if self.progress_changed else None}
        self.stored_lines += len(self.lines)
        self.lines, self.points, self.point_count, self.line_bytes = [], {}, 0, 0
        self.malformed = 0
        self.progress_changed = False
        self.summary_changed = False
        self.first_unflushed_at = None
        self.flushed_at = time.monotonic()
        return batch

    def _store_batch(self, batch: dict) -> None:
        after, lines, points = batch["after"], batch["lines"], batch["points"]
        with transaction.atomic():
            advanced = Run.objects.filter(pk=self.run_id, log_lines=after, lease_owner=self.owner).update(
                log_lines=after + len(lines),
                log_cursor=batch["cursor"],
                log_pending=batch["pending"],
                lease_until=lease_expiry(),
                **batch["reported"],
            )
            if not advanced:
                raise LeaseLost(self.run_id)
            if lines:
                LogChunk.objects.create(run_id=self.run_id, first_line=after + 1, line_count=len(lines), lines=lines)
            own = {key: series for key, series in points.items() if not is_system_key(key)}
            if own:
                # A statement a row: Django inserts several rows at once through arrays
                # (UNNEST), which psycopg quotes value by value, slowly for these bytes.
                MetricChunk.objects.bulk_create((metric_chunk_of(self.run_id, key, *series) for key, series in own.items()),
                                                batch_size=1)
            opened = self._store_system_points(points)
        self.open_chunks.update(opened)
        if lines:
            announce_log(self.run_id, after + len(lines))
        if batch["progress"] is not None:
            announce_progress(self.run_id, self.team_id, batch["progress"])

    def _store_system_points(self, points: dict) -> dict[str, MetricChunk]:
        """Add the system readings to each key's open chunk, or begin one where it is
        full (or this writer has none: a new collector never writes into its
        predecessor's). The chunks as stored, for open_chunks once committed."""
        stored = {}
        for key, series in points.items():
            if not is_system_key(key):
                continue
            chunk = self.open_chunks.get(key)
            if chunk is not None and chunk.count + len(series[1]) <= SYSTEM_CHUNK_POINTS:
                chunk = extended(MetricChunk(pk=chunk.pk, run_id=chunk.run_id, key=key, count=chunk.count,
                                             steps=chunk.steps, values=chunk.values, times=chunk.times), *series)
                chunk.save(update_fields=["count", "steps", "values", "times"])
            else:
                chunk = metric_chunk_of(self.run_id, key, *series)
                chunk.save()
            stored[key] = chunk
        return stored


class _Flusher:
    """A thread that stores a writer's batches (LogWriter._store_batch) in order, one
    at a time, while the collector goes on reading: the database's round trips and
    its work leave the collector's path. At most one batch waits or is stored at
    once; a failure is kept and raised to the writer by every later call."""

    def __init__(self, store, run_id: int):
        self.store = store
        self.changed = threading.Condition()
        self.batch: dict | None = None
        self.error: BaseException | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"flush-run-{run_id}", daemon=True)
        self.thread.start()

    def submit(self, batch: dict) -> None:
        with self.changed:
            while self.batch is not None and self.error is None:
                self.changed.wait()
            self._raise()
            self.batch = batch
            self.changed.notify_all()

    def drain(self) -> None:
        with self.changed:
            while self.batch is not None and self.error is None:
                self.changed.wait()
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self.changed:
                    while self.batch is None and not self.stopping:
                        self.changed.wait()
                    if self.batch is None:
                        return
                    batch = self.batch
                try:
                    self.store(batch)
                except BaseException as exc:  # the writer's to raise, in its own thread
                    with self.changed:
                        self.error = exc
                        self.changed.notify_all()
                    return
                with self.changed:
                    self.batch = None
                    self.changed.notify_all()
        finally:
            connections.close_all()  # this thread's own


def _pending_entry(stored: list) -> list:
    """A stored half line; those kept before lines were capped have no cut-off count."""
    at, text, *rest = stored
    return [at, text, rest[0] if rest else 0]


def _line_json_bytes(text: str) -> int:
    """About what a line costs in a page: its text and its number, time and stream."""
    return len(text.encode()) + 80


def read_lines(run: Run, after: int = 0, limit: int = 1000, max_bytes: int | None = None) -> dict:
    """Lines after line `after`: at most `limit`, and no more than about `max_bytes`
    (RUNYARD_LOG_PAGE_MAX_BYTES; a page holds at least one line). `next` is the
    last line given: the next page starts after it, so nothing is skipped."""
    after = max(0, after)
    limit = max(1, min(limit, 10000))
    budget = settings.RUNYARD_LOG_PAGE_MAX_BYTES if max_bytes is None else max_bytes
    chunks = LogChunk.objects.filter(
        run=run, first_line__gt=after - CHUNK_LINES_BOUND, first_line__lte=after + limit
    ).order_by("first_line")
    out = []
    used = 0
    full = False
    # One chunk row at a time: the page may end long before the last one.
    for chunk in chunks.iterator(chunk_size=1):
        for offset, (at, stream, text) in enumerate(chunk.lines):
            n = chunk.first_line + offset
            if n <= after:
                continue
            cost = _line_json_bytes(text)
            if len(out) >= limit or (out and used + cost > budget):
                full = True
                break
            used += cost
            out.append({"n": n, "t": _iso(at), "stream": STREAM_NAMES[stream], "text": text})
        if full:
            break
    next_after = out[-1]["n"] if out else after
    return {"lines": out, "next": next_after, "complete": run.log_complete and next_after >= run.log_lines}


def iter_text(run: Run) -> Iterator[str]:
    """The whole log as text, a chunk at a time."""
    last = 0
    while True:
        # A few rows at a time: each is up to ~1 MiB (rows stored before the cap, more).
        chunks = list(LogChunk.objects.filter(run=run, first_line__gt=last).order_by("first_line")[:4])
        if not chunks:
            return
        for chunk in chunks:
            yield "".join(text + "\n" for _, _, text in chunk.lines)
        last = chunks[-1].first_line


def last_stored_time(run_id: int) -> float:
    """When the latest output stored of a run was read (unix time; 0.0 for none): its
    last line, half line or reported point. A collector that must go on by time
    from there (the engine dropped the head of its log) takes what came after."""
    lines = LogChunk.objects.filter(run_id=run_id).order_by("-first_line").values_list("lines", flat=True).first()
    pending = Run.objects.filter(pk=run_id).values_list("log_pending", flat=True).first() or {}
    points = (MetricChunk.objects.filter(run_id=run_id).exclude(key__startswith=reports.SYSTEM_PREFIX)
              .aggregate(latest=Max("time_high"))["latest"])
    times = [lines[-1][0]] if lines else []
    times += [entry[0] for entry in pending.values()]
    return max(times + [points or 0.0])


def _iso(unix_time: float) -> str:
    return dt.datetime.fromtimestamp(unix_time, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def search(run: Run, query: str, after: int = 0, limit: int = 200, max_bytes: int | None = None) -> dict:
    """Lines containing `query` (case-insensitive), after line `after`: the whole
    stored log is searched on the server, not just what a page has loaded. At most
    `limit` hits and about `max_bytes` of them (RUNYARD_LOG_PAGE_MAX_BYTES)."""
    needle = query.lower()
    budget = settings.RUNYARD_LOG_PAGE_MAX_BYTES if max_bytes is None else max_bytes
    hits: list[dict] = []
    used = 0
    last_scanned = after
    chunks = LogChunk.objects.filter(run=run, first_line__gt=after - CHUNK_LINES_BOUND).order_by("first_line")
    for chunk in chunks.iterator(chunk_size=4):
        for offset, (at, stream, text) in enumerate(chunk.lines):
            n = chunk.first_line + offset
            if n <= after:
                continue
            if needle in text.lower():
                cost = _line_json_bytes(text)
                if hits and used + cost > budget:
                    return {"hits": hits, "next": last_scanned, "done": False}
                used += cost
                hits.append({"n": n, "t": _iso(at), "stream": STREAM_NAMES[stream], "text": text})
                if len(hits) >= limit:
                    return {"hits": hits, "next": n, "done": False}
            last_scanned = n
    return {"hits": hits, "next": last_scanned, "done": True}
