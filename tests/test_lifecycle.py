"""The lifecycle table of SPEC §1 and its one door, on the real database."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from threading import Barrier

import pytest
import yaml
from django.db import connection, transaction
from django.utils import timezone

from runs.lifecycle import FINAL, TRANSITIONS, IllegalTransition, transition
from runs.models import Run, RunEvent, Status
from runs.services import create_run

ALLOWED = {
    ("pending", "initializing"), ("pending", "terminated"),
    ("initializing", "running"), ("initializing", "failed"), ("initializing", "terminated"),
    ("running", "stopping"), ("running", "idle"), ("running", "terminated"),
    ("stopping", "completed"), ("stopping", "failed"), ("stopping", "terminated"),
    ("idle", "terminated"),
}
PATH_TO = {  # how a run reaches each status through legal steps
    "pending": [],
    "initializing": ["initializing"],
    "running": ["initializing", "running"],
    "stopping": ["initializing", "running", "stopping"],
    "idle": ["initializing", "running", "idle"],
    "completed": ["initializing", "running", "stopping", "completed"],
    "failed": ["initializing", "failed"],
    "terminated": ["terminated"],
}


def new_run(user) -> Run:
    return create_run(user=user, source=yaml.safe_dump({"name": "x", "image": "runyard/busybox:latest", "run": [{"command": "true"}]}), executor="local")


def move(run: Run, status: str) -> Run:
    for step in PATH_TO[status]:
        run = transition(run.pk, step, reason="test")
    return run


def test_the_table_is_exactly_the_spec():
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert FINAL == {"completed", "failed", "terminated"}


@pytest.mark.parametrize("current", Status.values)
@pytest.mark.parametrize("target", Status.values)
def test_it_applies_only_listed_transitions(alice, current, target):
    run = move(new_run(alice), current)
    events_before = RunEvent.objects.filter(run=run).count()
    if (current, target) in ALLOWED:
        run = transition(run.pk, target, actor=alice, reason="because")
        assert run.status == target
        event = RunEvent.objects.filter(run=run).last()
        assert (event.from_status, event.to_status, event.actor_name, event.reason) == (current, target, "alice", "because")
    else:
        with pytest.raises(IllegalTransition):
            transition(run.pk, target, actor=alice)
        assert Run.objects.get(pk=run.pk).status == current
        assert RunEvent.objects.filter(run=run).count() == events_before


def test_it_stamps_each_phase(alice):
    run = move(new_run(alice), "completed")
    assert run.created_at <= run.initializing_at <= run.started_at <= run.stopping_at <= run.finished_at


def test_it_charges_credits_for_initializing_running_and_idle_only(alice):
    from datetime import timedelta

    run = move(new_run(alice), "idle")
    t0 = run.initializing_at
    Run.objects.filter(pk=run.pk).update(
        started_at=t0 + timedelta(seconds=60), idle_at=t0 + timedelta(seconds=3600),
    )
    run = transition(run.pk, "terminated")
    Run.objects.filter(pk=run.pk).update(finished_at=t0 + timedelta(seconds=5400))
    run = Run.objects.get(pk=run.pk)
    assert run.charged_seconds == 5400  # 3600 initializing+running, then 1800 idle
    assert str(run.credits) == "1.5000"  # cpu-small: 1 credit an hour


def test_a_system_transition_is_recorded_as_system(alice):
    run = transition(new_run(alice).pk, "initializing", reason="picked up")
    assert RunEvent.objects.get(run=run).actor_name == "system"


def test_concurrent_transitions_apply_once(alice, transactional_db):
    # Committed for the threads to see it; a lease held "by a worker" keeps a live
    # Celery worker (from other tests) from acting on this run meanwhile.
    with transaction.atomic():
        run = move(new_run(alice), "running")
        Run.objects.filter(pk=run.pk).update(lease_owner="a-busy-worker", lease_until=timezone.now() + timedelta(minutes=5))
    barrier = Barrier(20)

    def attempt(_):
        barrier.wait()
        try:
            transition(run.pk, "terminated", reason="race")
            return "ok"
        except IllegalTransition:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert results.count("ok") == 1
    assert RunEvent.objects.filter(run=run, to_status="terminated").count() == 1
