"""Celery tasks: thin, each takes a run id and calls one function of runs.engine.

`enqueue` sends a task once the current transaction commits: to the Celery
workers in a full deployment, or to an in-process thread pool in the embedded
default (SPEC §6), where a background thread also stands in for celery beat.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task
from django.conf import settings
from django.db import transaction

from runs import engine

log = logging.getLogger(__name__)


@shared_task(name="runs.tasks.start")
def start(run_id: int) -> None:
    engine.close_db_after(engine.start_run)(run_id)


@shared_task(name="runs.tasks.collect")
def collect(run_id: int) -> None:
    engine.close_db_after(engine.collect_run)(run_id)


@shared_task(name="runs.tasks.stop")
def stop(run_id: int) -> None:
    engine.close_db_after(engine.stop_run)(run_id)


@shared_task(name="runs.tasks.reconcile")
def reconcile() -> dict:
    return engine.close_db_after(engine.reconcile_runs)()


TASKS = {"start": start, "collect": collect, "stop": stop}


def enqueue(name: str, run_id: int, *, on_commit: bool = True) -> None:
    task = TASKS[name]

    def send() -> None:
        if settings.RUNYARD_TASKS_IN_PROCESS:
            in_process_pool().submit(_run_logged, task, run_id)
        else:
            task.delay(run_id)

    if on_commit:
        transaction.on_commit(send)
    else:
        send()


def _run_logged(task, run_id: int) -> None:
    try:
        task(run_id)  # calling a Celery task object runs it right here
    except Exception:
        log.exception("task %s failed for run %s", task.name, run_id)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def in_process_pool() -> ThreadPoolExecutor:
    """The embedded default's workers, and its stand-in for celery beat."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="runyard-task")
            threading.Thread(target=_beat, name="runyard-beat", daemon=True).start()
        return _pool


def _beat() -> None:
    interval = settings.CELERY_BEAT_SCHEDULE["reconcile-runs"]["schedule"]
    while True:
        try:
            reconcile()
        except Exception:
            log.exception("reconcile failed")
        time.sleep(interval)
