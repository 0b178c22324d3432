"""The run lifecycle on real containers, real local processes and a real Swarm of
three engines, driven by a real Celery worker (SPEC §1, §7). Every test that is not
about one engine's own features runs on all three executors."""

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import yaml
from django.db import connection, transaction
from django.utils import timezone

from runs import logstore
from runs.executors import executor_for
from runs.lifecycle import transition
from runs.models import Run, RunEvent
from runs.services import create_run, terminate_run
from tests.conftest import BUSYBOX, EXECUTORS, Api, use_executor, wait_for

FINAL = {"completed", "failed", "terminated"}


@pytest.fixture(params=EXECUTORS)
def executor(request, engine):
    return use_executor(request)


def spec(*commands: str, **extra) -> str:
    body = {"name": "engine-test", "image": BUSYBOX, "run": [{"command": c} for c in commands], **extra}
    return yaml.safe_dump(body)


def launch(user, executor: str, *commands: str, **extra) -> Run:
    if executor == "swarm":
        extra["resources"] = {"cluster": "lab", **extra.get("resources", {})}
    return create_run(user=user, source=spec(*commands, **extra), executor=executor)


def log_texts(run: Run) -> list[str]:
    return [line["text"] for line in logstore.read_lines(run, after=0, limit=10000)["lines"]]


def statuses(run: Run) -> list[str]:
    events = RunEvent.objects.filter(run=run).order_by("at", "pk")
    return [events[0].from_status] + [e.to_status for e in events] if events else []


def container_left(run: Run) -> bool:
    return executor_for(run).exists(run)


def wait_for_log(run: Run, text: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_texts(run):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log of run {run.pk}: {log_texts(run)[-5:]}")


def test_it_completes_when_the_command_exits_0(alice, executor):
    run = launch(alice, executor, "echo hello from $RUNYARD_RUN_ID", "echo second step")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.exit_code == 0
    assert log_texts(run) == [f"hello from {run.pk}", "second step"]
    assert statuses(run) == ["pending", "initializing", "running", "stopping", "completed"]
    assert run.initializing_at <= run.started_at <= run.stopping_at <= run.finished_at
    assert not container_left(run)


def test_it_fails_with_the_exit_code(alice, executor):
    run = launch(alice, executor, "echo about to fail", "exit 3", "echo never printed")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "failed"
    assert run.exit_code == 3
    assert run.status_reason == "exit code 3"
    assert log_texts(run) == ["about to fail"]
    assert not container_left(run)


def test_it_terminates_a_pending_run(alice, executor):
    with transaction.atomic():  # the worker only hears of the run on commit
        run = launch(alice, executor, "echo should never run")
        terminate_run(run, actor=alice)
    run = wait_for(run.pk, "terminated", removed=True)
    assert statuses(run) == ["pending", "terminated"]
    assert run.started_at is None
    assert not container_left(run)


def test_it_terminates_an_initializing_run(alice, executor):
    # A worker picked the run up and is still preparing it (it holds the run's lease).
    with transaction.atomic():
        run = launch(alice, executor, "echo should never run")
        transition(run.pk, "initializing", reason="picked up by a worker")
        Run.objects.filter(pk=run.pk).update(lease_owner="a-slow-worker", lease_until=timezone.now() + timedelta(seconds=2))
    terminated = Api(alice).post(f"/runs/{run.pk}/terminate")
    assert terminated.status_code == 202
    run = wait_for(run.pk, "terminated", timeout=60, removed=True)
    assert statuses(run) == ["pending", "initializing", "terminated"]
    assert not container_left(run)


def test_it_terminates_a_running_run(alice, executor):
    run = launch(alice, executor, "trap 'echo caught SIGTERM; exit 0' TERM; echo started; while :; do sleep 0.1; done",
                 termination_grace="20s")
    wait_for(run.pk, "running")
    wait_for_log(run, "started")
    response = Api(alice).post(f"/runs/{run.pk}/terminate")
    assert response.status_code == 202
    assert response.json()["status"] == "terminated"
    run = wait_for(run.pk, "terminated", removed=True)
    # The process got SIGTERM and said so; what it printed then is kept.
    assert "caught SIGTERM" in log_texts(run)
    assert run.exit_code != 137
    event = RunEvent.objects.get(run=run, to_status="terminated")
    assert (event.from_status, event.actor_name) == ("running", "alice")
    assert not container_left(run)


def test_it_kills_a_process_that_ignores_sigterm_after_the_grace(alice, executor):
    run = launch(alice, executor, "trap '' TERM; echo stubborn; while :; do sleep 0.1; done", termination_grace="2s")
    wait_for(run.pk, "running")
    wait_for_log(run, "stubborn")
    terminate_run(run, actor=alice)
    run = wait_for(run.pk, "terminated", removed=True)
    assert run.exit_code == 137  # 128 + SIGKILL
    assert not container_left(run)


def test_it_goes_idle_with_termination_protection_and_keeps_the_container(alice, executor):
    run = launch(alice, executor, "echo work done", "exit 5", termination_protection=True)
    run = wait_for(run.pk, "idle")
    assert run.exit_code == 5
    assert container_left(run)
    assert log_texts(run) == ["work done"]
    terminate_run(run, actor=alice)
    run = wait_for(run.pk, "terminated", removed=True)
    assert statuses(run) == ["pending", "initializing", "running", "idle", "terminated"]
    assert run.exit_code == 5
    assert not container_left(run)


def test_it_fails_a_run_whose_image_is_missing(alice, engine, docker_engine):
    run = create_run(user=alice, source=spec("echo hi", image="runyard/does-not-exist:1.0"), executor="docker")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "failed"
    assert "image not found" in run.status_reason
    assert "runyard/does-not-exist:1.0" in run.status_reason
    assert statuses(run) == ["pending", "initializing", "failed"]


def test_it_records_the_image_digest_and_applies_limits(alice, engine, docker_engine):
    run = launch(alice, "docker", "echo limited; sleep 30", resources={"preset": "tiny"})
    run = wait_for(run.pk, "running")
    container = docker_engine.containers.get(run.container_id)
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    run.refresh_from_db()
    assert run.image_digest == docker_engine.images.get(BUSYBOX).id
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_it_reports_a_container_killed_for_memory(alice, engine, docker_engine):
    # tiny has 64 MiB: a shell variable doubled until it cannot grow any more.
    run = launch(alice, "docker", 'x=0123456789abcdef; while :; do x="$x$x"; done', resources={"preset": "tiny"})
    run = wait_for(run.pk, FINAL, timeout=90, removed=True)
    assert run.status == "failed"
    assert run.exit_code == 137
    assert run.status_reason == "exit code 137 (killed: out of memory)"


def test_it_reproduces_a_finished_run(alice, executor):
    api = Api(alice)
    original = launch(alice, executor, "echo reproducible")
    running = api.post(f"/runs/{original.pk}/reproduce")
    assert running.status_code == 409  # not final yet
    original = wait_for(original.pk, "completed", removed=True)
    response = api.post(f"/runs/{original.pk}/reproduce")
    assert response.status_code == 201
    copy = response.json()
    assert copy["reproduced_from"] == original.pk
    assert copy["spec"] == original.spec
    copy_run = wait_for(copy["id"], FINAL, removed=True)
    assert copy_run.status == "completed"
    assert log_texts(copy_run) == ["reproducible"]


def test_a_final_run_cannot_be_terminated(alice, executor):
    run = wait_for(launch(alice, executor, "true").pk, "completed", removed=True)
    response = Api(alice).post(f"/runs/{run.pk}/terminate")
    assert response.status_code == 409
    assert "already completed" in response.json()["detail"]
    assert RunEvent.objects.filter(run=run, to_status="terminated").count() == 0


def test_100_concurrent_terminates_make_one_transition(alice, engine, docker_engine):
    run = launch(alice, "docker", "echo up; sleep 300", termination_grace="1s")
    wait_for(run.pk, "running")

    def terminate(_):
        try:
            return Api(alice).post(f"/runs/{run.pk}/terminate").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(terminate, range(100)))
    assert sorted(set(codes)) == [202, 409]
    assert codes.count(202) == 1
    assert RunEvent.objects.filter(run=run, to_status="terminated").count() == 1
    wait_for(run.pk, "terminated", removed=True)
