"""Celery tasks: thin, each takes a run id and calls one function of runs.engine.

`enqueue` sends a task once the current transaction commits: to the Celery
workers in a full deployment, or to an in-process thread pool in the embedded
default (SPEC §6), where a background thread also stands in for celery beat.

Terminate must never wait behind log collection, which holds a thread for as long
as a run runs. With Celery, collectors have a queue of their own (`collect`) and
start, stop, dispatch and reconcile go to `control` (routes in dashboard/settings.py),
each served by its own worker. In the embedded default each kind has its own pool:
stops (and dispatch) in a small `control` pool, starts in `start`, collectors in
`collect`, sized by RUNYARD_COLLECTOR_THREADS. Their threads do not hold the process
up when it exits (Ctrl-C on `make run`): what they were doing is taken up again at the
next start, as after a crash (leases expire, the reconciler hands the runs on).
"""

import logging
import queue
import threading
import time

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction

from runs import engine, slots

log = logging.getLogger(__name__)


# A thread of the embedded default's pools keeps its database connection from one job
# to the next (a new connection to PostgreSQL costs a start more than its admission),
# and closes it once no job came for this long.
POOL_IDLE_CLOSE_SECONDS = 5.0
_pool_thread = threading.local()


def close_db_after(func):
    """Tasks run in long-lived threads. A Celery worker's thread gets a fresh database
    connection for each task; a pool thread of the embedded default keeps a usable one for
    its next job (as Django keeps a request thread's, CONN_MAX_AGE) and closes it when idle
    (DaemonPool)."""

    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            if getattr(_pool_thread, "keeps_connection", False):
                connection.close_if_unusable_or_obsolete()
            else:
                connection.close()

    return wrapper


@shared_task(name="runs.tasks.start")
def start(run_id: int) -> None:
    close_db_after(engine.start_run)(run_id)


@shared_task(name="runs.tasks.collect")
def collect(run_id: int) -> None:
    close_db_after(engine.collect_run)(run_id)


@shared_task(name="runs.tasks.stop")
def stop(run_id: int) -> None:
    close_db_after(engine.stop_run)(run_id)


@shared_task(name="runs.tasks.dispatch")
def dispatch() -> int:
    """Start the pending runs that fit now (a slot just freed)."""
    return close_db_after(slots.dispatch)()


@shared_task(name="runs.tasks.reconcile")
def reconcile() -> dict:
    return close_db_after(engine.reconcile_runs)()


TASKS = {"start": start, "collect": collect, "stop": stop}
# The embedded default's pool for each task: a stop never waits for a thread that a
# slow start or a run's collector holds.
IN_PROCESS_POOL = {"stop": "control", "dispatch": "control", "start": "start", "collect": "collect"}
CONTROL_THREADS = 16  # a stop holds its thread through the grace period
START_THREADS = 8


def enqueue(name: str, run_id: int, *, on_commit: bool = True) -> None:
    task = TASKS[name]

    def send() -> None:
        if settings.RUNYARD_TASKS_IN_PROCESS:
            _submit_in_process(name, run_id, task, run_id)
        else:
            task.delay(run_id)

    if on_commit:
        transaction.on_commit(send)
    else:
        send()


def enqueue_dispatch() -> None:
    """Send `dispatch` now (callers run it after their transaction commits)."""
    if settings.RUNYARD_TASKS_IN_PROCESS:
        _submit_in_process("dispatch", None, dispatch)
    else:
        dispatch.delay()


class DaemonPool:
    """Up to `size` threads taking jobs in order, started as jobs need them. Unlike
    ThreadPoolExecutor's, they are daemon threads: the interpreter does not wait at
    exit for a collector that would run as long as its run."""

    def __init__(self, size: int, name: str):
        self.size, self.name = size, name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0  # threads waiting for a job that no submitted job has claimed yet

    def submit(self, fn, *args) -> None:
        with self.lock:
            if self.idle:
                self.idle -= 1  # that thread takes this job
            elif self.threads < self.size:
                self.threads += 1
                threading.Thread(target=self._work, name=f"{self.name}_{self.threads}", daemon=True).start()
            # else every thread is busy: the job waits its turn
        self.jobs.put((fn, args))

    def _work(self) -> None:
        _pool_thread.keeps_connection = True
        while True:
            try:
                fn, args = self.jobs.get(timeout=POOL_IDLE_CLOSE_SECONDS)
            except queue.Empty:
                connection.close()  # idle: no connection held for nothing
                fn, args = self.jobs.get()
            try:
                fn(*args)
            except Exception:
                log.exception("in-process job %s failed", getattr(fn, "__name__", fn))
            with self.lock:
                self.idle += 1


_pools: dict[str, DaemonPool] = {}
_pool_lock = threading.Lock()
# (task name, run id) submitted to a pool and not started yet: the reconciler asks
# again every few seconds for a run that waits for a collector thread, and one
# waiting task a run is enough.
_queued: set[tuple[str, int | None]] = set()


def _submit_in_process(name: str, run_id: int | None, task, *args) -> None:
    key = (name, run_id)
    pool = in_process_pool(IN_PROCESS_POOL[name])
    with _pool_lock:
        if key in _queued:
            return
        _queued.add(key)
    pool.submit(_run_logged, key, task, *args)


def _run_logged(key: tuple[str, int | None], task, *args) -> None:
    with _pool_lock:
        _queued.discard(key)
    try:
        task(*args)  # calling a Celery task object runs it right here
    except Exception:
        log.exception("task %s failed for %s", task.name, args)


def in_process_pool(kind: str = "control") -> DaemonPool:
    """The embedded default's worker pools, and its stand-in for celery beat."""
    with _pool_lock:
        if not _pools:
            sizes = {"control": CONTROL_THREADS, "start": START_THREADS, "collect": settings.RUNYARD_COLLECTOR_THREADS}
            for pool_kind, size in sizes.items():
                _pools[pool_kind] = DaemonPool(size, f"runyard-{pool_kind}")
            threading.Thread(target=_beat, name="runyard-beat", daemon=True).start()
        return _pools[kind]


def _beat() -> None:
    interval = settings.CELERY_BEAT_SCHEDULE["reconcile-runs"]["schedule"]
    while True:
        try:
            reconcile()
        except Exception:
            log.exception("reconcile failed")
        time.sleep(interval)
