"""System metrics of a live run: its CPU % and memory, read every few seconds.

The run's log collector (runs.engine.collect_run) takes a reading from the run's
executor every RUNYARD_SYSTEM_METRICS_SECONDS (runs.executors.base.Sample) and hands
it to its LogWriter, which stores it as the metrics `sys/cpu_percent` (100 is one
CPU busy, as in `docker stats`) and `sys/memory_mib`, without a step, in the same
lease-guarded transaction as the log lines. A reading does not make a row of its
own: each key's readings go on in the chunk its collector began (up to
runs.logstore.SYSTEM_CHUNK_POINTS, then a new one), so a day's readings are a few
dozen rows and a reader still sees every one stored so far. A collector that lost the run stores
nothing; the one after it stores only its own readings: nothing is doubled, and
at most the readings of a flush that never happened are missing.

Names under `sys/` are Runyard's own: a run cannot report them (runs.reports), and
they count against no cap (RUNYARD_METRIC_KEYS_MAX is the run's own names).
"""

import logging
import time

from django.conf import settings

from runs.reports import SYSTEM_PREFIX

log = logging.getLogger(__name__)

CPU_PERCENT = SYSTEM_PREFIX + "cpu_percent"
MEMORY_MIB = SYSTEM_PREFIX + "memory_mib"


def is_system_key(key: str) -> bool:
    return key.startswith(SYSTEM_PREFIX)


class SystemSampler:
    """Readings of one run for its collector: the first at once, then one every
    `every` seconds (0: none). The CPU % is between a reading and the one before."""

    def __init__(self, executor, run, every: float | None = None):
        self.executor, self.run = executor, run
        self.every = settings.RUNYARD_SYSTEM_METRICS_SECONDS if every is None else every
        self.previous = None
        self.next_at = time.monotonic()

    def due(self) -> bool:
        return self.every > 0 and time.monotonic() >= self.next_at

    def take(self) -> tuple[float, dict[str, float]] | None:
        """(the reading's unix time, its metrics), or None if nothing could be read."""
        self.next_at = time.monotonic() + self.every
        try:
            sample = self.executor.sample(self.run)
        except Exception:  # a reading is never worth the run's log: try again next time
            log.warning("run %s: could not read its CPU and memory", self.run.pk, exc_info=True)
            return None
        if sample is None:
            return None
        metrics = {MEMORY_MIB: round(sample.memory_mib, 3)}
        previous, self.previous = self.previous, sample
        if previous is not None and sample.at > previous.at:
            used = max(0.0, sample.cpu_seconds - previous.cpu_seconds)  # a local run's ended child may go uncounted
            metrics[CPU_PERCENT] = round(100 * used / (sample.at - previous.at), 2)
        return sample.at, metrics
