"""The reconciler repairs what crashes leave behind (issue 2 §6): it runs under
the worker's celery beat, every 2 s in the tests."""

import time

from runs.models import Run
from tests.conftest import BUSYBOX, TEST_INSTANCE, wait_for
from tests.test_engine import launch, log_texts, wait_for_log


def test_a_run_whose_container_vanished_fails_saying_so(alice, engine, docker_engine):
    run = launch(alice, "docker", "echo alive; sleep 300")
    run = wait_for(run.pk, "running")
    wait_for_log(run, "alive")
    docker_engine.containers.get(run.container_id).remove(force=True)
    run = wait_for(run.pk, "failed", timeout=60)
    assert run.status_reason == "container disappeared"
    assert log_texts(run) == ["alive"]


def test_a_container_that_belongs_to_no_live_run_is_removed(alice, engine, docker_engine):
    finished = wait_for(launch(alice, "docker", "true").pk, "completed", removed=True)
    stray = []
    for run_id in (finished.pk, 987654321):  # a final run, and a run that does not exist
        stray.append(docker_engine.containers.create(
            BUSYBOX, ["sleep", "300"], labels={"runyard.instance": TEST_INSTANCE, "runyard.run": str(run_id)},
            network_mode="none",
        ))
    other_installation = docker_engine.containers.create(
        BUSYBOX, ["sleep", "300"], labels={"runyard.instance": "someone-else", "runyard.run": "1"}, network_mode="none"
    )
    try:
        deadline = time.monotonic() + 60
        left = {c.id for c in stray}
        while left and time.monotonic() < deadline:
            present = {c.id for c in docker_engine.containers.list(all=True)}
            left &= present
            time.sleep(0.5)
        assert not left, "stray containers were not removed"
        other_installation.reload()  # still there: not ours to remove
    finally:
        other_installation.remove(force=True)


def test_a_run_left_initializing_by_a_dead_worker_is_started(alice, engine, docker_engine):
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from runs.lifecycle import transition

    with transaction.atomic():
        run = launch(alice, "docker", "echo resumed")
        transition(run.pk, "initializing", reason="picked up by a worker that then died")
        Run.objects.filter(pk=run.pk).update(lease_owner="dead-worker", lease_until=timezone.now() + timedelta(seconds=1))
    run = wait_for(run.pk, "completed", timeout=60, removed=True)
    assert log_texts(run) == ["resumed"]
