"""Leases on runs: whoever holds an unexpired lease (a start, collect or stop task)
works on the run; the reconciler hands an expired one to a new task.

A lease lasts RUNYARD_COLLECTOR_LEASE_SECONDS from its last renewal. Work that can
take longer than that without touching the run (a git clone, filling a dataset
volume, copying exports out) runs inside `LeaseHeartbeat`, which renews the lease
from a thread of its own while the work goes on; a worker that dies stops renewing,
and its lease runs out as before.
"""

import datetime as dt
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from runs.models import Run

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker owns the run now: stop without writing."""


def lease_seconds() -> float:
    return float(settings.RUNYARD_COLLECTOR_LEASE_SECONDS)


def lease_expiry() -> dt.datetime:
    return timezone.now() + timedelta(seconds=lease_seconds())


def take_lease(run_id: int, owner: str) -> bool:
    now = timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner)
    return Run.objects.filter(free, pk=run_id).update(lease_owner=owner, lease_until=lease_expiry()) == 1


def renew_lease(run_id: int, owner: str) -> None:
    if not Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_until=lease_expiry()):
        raise LeaseLost(run_id)


def holds_lease(run_id: int, owner: str) -> bool:
    return Run.objects.filter(pk=run_id, lease_owner=owner, lease_until__gte=timezone.now()).exists()


def release_lease(run_id: int, owner: str) -> None:
    Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_owner="", lease_until=None)


class LeaseHeartbeat:
    """Renews `owner`'s lease on a run every third of the lease while the `with`
    block runs. `lost` turns true if another worker took the lease meanwhile
    (then this one must not act as the run's owner any more)."""

    def __init__(self, run_id: int, owner: str):
        self.run_id, self.owner = run_id, owner
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def check(self) -> None:
        """Raise LeaseLost if another worker holds the run now."""
        if self.lost:
            raise LeaseLost(self.run_id)

    def _beat(self) -> None:
        interval = max(0.5, lease_seconds() / 3)
        try:
            while not self._done.wait(interval):
                try:
                    renew_lease(self.run_id, self.owner)
                except LeaseLost:
                    self.lost = True
                    log.warning("run %s: lease of %s taken over", self.run_id, self.owner)
                    return
                except Exception:  # a database hiccup: try again at the next beat
                    log.exception("run %s: could not renew the lease", self.run_id)
        finally:
            connection.close()  # this thread's own connection
