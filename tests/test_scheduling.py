"""Slots, leases and the order work is served in (issue 7 §3), on real containers
driven by a real Celery deployment (a control worker and a collect worker).

The test worker's lease is 6 s and it reconciles every 2 s (tests/conftest.py),
so a step that takes longer than 6 s without renewing its lease is handed to a
second worker within seconds.
"""

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.test import Client

from runs.executors.docker import DockerExecutor
from runs.models import Run, RunEvent, RunFile, Team
from runs.services import create_run, terminate_run
from tests.conftest import BUSYBOX, ROOT, TEST_INSTANCE, Api, Worker, wait_for, wait_until
from tests.test_engine import container_left, launch, log_texts, statuses, wait_for_log

LEASE_SECONDS = 6  # RUNYARD_COLLECTOR_LEASE_SECONDS in worker_env
SLEEPER = "echo up; while :; do sleep 0.2; done"



def run_state(run_id: int) -> Run:
    return Run.objects.get(pk=run_id)


class SlowGitServer:
    """A git repository served over git's plain ("dumb") HTTP protocol by a server
    that answers each request after `delay` seconds: a slow remote, as a far-away
    or overloaded git host is. A clone from it takes several times the lease."""

    def __init__(self, root: Path, files: dict[str, str]):
        self.label = root.name
        work = root / "work"
        work.mkdir()
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
        subprocess.run(git + ["init", "-q", "-b", "main", str(work)], check=True)
        for name, text in files.items():
            (work / name).write_text(text)
            subprocess.run(git + ["-C", str(work), "add", name], check=True)
            # One commit per file: the dumb protocol walks history one commit after another.
            subprocess.run(git + ["-C", str(work), "commit", "-q", "-m", name], check=True)
        self.commit = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)
        subprocess.run(["git", "-C", str(root / "repo.git"), "update-server-info"], check=True)
        self.delay = 0.0
        self.slow_clones = 0  # clones while the remote is slow: each reads the tip commit once
        tip_object = f"/repo.git/objects/{self.commit[:2]}/{self.commit[2:]}"
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                if server.delay and self.path == tip_object:
                    server.slow_clones += 1
                time.sleep(server.delay)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/repo.git"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_git(tmp_path):
    files = {f"part{n}.txt": f"part {n} of the slow repository ({tmp_path.name})\n" for n in range(8)}
    server = SlowGitServer(tmp_path, files)
    yield server
    server.close()


def test_a_start_that_takes_longer_than_its_lease_completes(alice, engine, docker_engine, slow_git):
    source = yaml.safe_dump({
        "name": "slow-clone", "image": BUSYBOX,
        "import": {"/code/": {"git": {"url": slow_git.url, "ref": slow_git.commit}}},
        # Long enough that a second start, had one come, would find the run running.
        "run": [{"command": "cat /code/part7.txt; sleep 12; echo done"}],
    })
    run = create_run(user=alice, source=source, executor="docker")
    slow_git.delay = 1.0  # from now on every request to the remote takes a second
    run = wait_for(run.pk, {"completed", "failed", "terminated"}, timeout=180, removed=True)
    assert run.status == "completed", run.status_reason
    assert statuses(run) == ["pending", "initializing", "running", "stopping", "completed"]
    assert not RunEvent.objects.filter(run=run, to_status="terminated").exists()
    assert log_texts(run) == [f"part 7 of the slow repository ({slow_git.label})", "done"]
    assert run.exit_code == 0
    # The premise: the start outlasted the lease several times over; its lease held,
    # so no second worker cloned the repository meanwhile.
    assert (run.started_at - run.initializing_at).total_seconds() > 2 * LEASE_SECONDS
    assert slow_git.slow_clones == 1


def test_an_export_copy_that_takes_longer_than_its_lease_is_stored_once(alice, engine, docker_engine):
    # Enough files that copying them out takes well over the 6 s lease on an idle
    # machine too (20,000 took 5.3 s on one).
    count = 40000
    source = yaml.safe_dump({
        "name": "many-outputs", "image": BUSYBOX,
        "run": [{"command": f"mkdir -p /output; i=0; while [ $i -lt {count} ]; do echo \"file $i\" > /output/f$i.txt; i=$((i+1)); done; echo written"}],
        "export": {"/output/": "volume://outputs"},
    })
    run = create_run(user=alice, source=source, executor="docker")
    run = wait_for(run.pk, {"completed", "failed", "terminated"}, timeout=300, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.exports_state == "complete"
    assert statuses(run) == ["pending", "initializing", "running", "stopping", "completed"]
    files = RunFile.objects.filter(run=run)
    assert files.count() == count
    assert set(files.values_list("path", flat=True)) == {f"/output/f{i}.txt" for i in range(count)}
    # Every file stored once: no second copy beside it under another name.
    folder = Path(settings.MEDIA_ROOT) / f"runs/{run.pk}/files/output"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"f{i}.txt" for i in range(count))
    # ... and none written again after the run said it was done (as a second copy would).
    last_written = max(p.stat().st_mtime for p in folder.iterdir())
    assert last_written <= run.finished_at.timestamp()
    sample = files.get(path="/output/f123.txt")
    assert (Path(settings.MEDIA_ROOT) / sample.storage_name).read_text() == "file 123\n"
    # The premise: copying out took longer than the lease.
    assert (run.finished_at - run.stopping_at).total_seconds() > LEASE_SECONDS


def test_a_team_at_its_cap_waits_in_order_and_other_teams_are_unaffected(alice, charlie, engine, docker_engine):
    Team.objects.filter(name="vision").update(max_running=2)
    api = Api(alice)
    first, second = (launch(alice, "docker", SLEEPER, termination_grace="1s") for _ in range(2))
    for run in (first, second):
        wait_for(run.pk, "running")
    third = launch(alice, "docker", "echo third", termination_grace="1s")
    fourth = launch(alice, "docker", "echo fourth", termination_grace="1s")
    reason = "waiting: team vision is at its cap of 2 running runs"
    wait_until(lambda: run_state(fourth.pk).status_reason == reason, 30, "the fourth run's waiting reason")
    for run, place in ((third, 1), (fourth, 2)):
        body = api.get(f"/runs/{run.pk}").json()
        assert (body["status"], body["status_reason"], body["queue_position"]) == ("pending", reason, place)
    listed = {item["id"]: item["queue_position"] for item in api.get("/runs").json()["items"]}
    assert listed[third.pk] == 1 and listed[fourth.pk] == 2 and listed[first.pk] is None

    # The runs list says why and where a run waits.
    page = Client()
    page.force_login(alice)
    html = page.get("/").content.decode()
    assert reason in html and "#1 in the team's queue" in html and "#2 in the team's queue" in html

    # Another team's run starts at once.
    other = launch(charlie, "docker", "echo speech team", termination_grace="1s")
    other = wait_for(other.pk, "completed", timeout=60, removed=True)
    assert statuses(other) == ["pending", "initializing", "running", "stopping", "completed"]
    assert run_state(third.pk).status == "pending"

    # A slot frees: the next run of the team starts, the one after it moves up.
    terminate_run(first, actor=alice)
    third = wait_for(third.pk, "completed", timeout=60, removed=True)
    assert log_texts(third) == ["third"]
    fourth = wait_for(fourth.pk, "completed", timeout=60, removed=True)
    assert log_texts(fourth) == ["fourth"]
    terminate_run(second, actor=alice)
    wait_for(second.pk, "terminated", removed=True)
    assert api.get(f"/runs/{second.pk}").json()["queue_position"] is None


def test_why_a_run_waits_reaches_the_runs_list_live(alice, engine):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from dashboard.asgi import application
    from tests.conftest import in_thread
    from tests.test_live import ORIGIN, session_cookie

    Team.objects.filter(name="vision").update(max_running=0)  # nothing of the team may start
    cookie = session_cookie(alice)

    async def watch():
        socket = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", cookie)])
        assert (await socket.connect(timeout=10))[0]
        try:
            run = await database_sync_to_async(launch)(alice, "local", "echo never")
            while True:  # the worker's start finds no room and says so, to the list too
                message = await socket.receive_json_from(timeout=30)
                if message["type"] == "waiting" and message["run"] == run.pk:
                    return run, message["reason"]
        finally:
            await socket.disconnect()

    run, reason = in_thread(watch)
    assert reason == "waiting: team vision is at its cap of 0 running runs"
    assert run_state(run.pk).status_reason == reason and run_state(run.pk).status == "pending"
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated")


def test_a_terminated_pending_run_never_starts(alice, engine, docker_engine):
    Team.objects.filter(name="vision").update(max_running=1)
    holder = launch(alice, "docker", SLEEPER, termination_grace="1s")
    wait_for(holder.pk, "running")
    queued = launch(alice, "docker", "echo must never run")
    wait_until(lambda: run_state(queued.pk).status_reason.startswith("waiting:"), 30, "the queued run's waiting reason")
    response = Api(alice).post(f"/runs/{queued.pk}/terminate")
    assert response.status_code == 202
    assert response.json()["queue_position"] is None
    # The slot frees; a later run takes it, and the terminated one stays as it was.
    terminate_run(holder, actor=alice)
    later = launch(alice, "docker", "echo later")
    later = wait_for(later.pk, "completed", timeout=60, removed=True)
    queued = wait_for(queued.pk, "terminated", removed=True)
    assert statuses(queued) == ["pending", "terminated"]
    assert queued.started_at is None and queued.initializing_at is None
    assert log_texts(queued) == []
    assert not container_left(queued)


def test_a_terminate_is_served_while_every_collector_thread_is_busy(alice, engine, docker_engine, worker_env, tmp_path):
    # A deployment whose collect worker has two threads, both taken by long runs.
    engine.stop()
    small = Worker(worker_env, tmp_path, control_threads=2, collect_threads=2, name="small")
    small.start()
    try:
        command = "trap 'echo stopping now; exit 0' TERM; " + SLEEPER
        collected = [launch(alice, "docker", command, termination_grace="3s") for _ in range(2)]
        for run in collected:
            wait_for(run.pk, "running")
            wait_for_log(run, "up")
        uncollected = launch(alice, "docker", command, termination_grace="3s")
        wait_for(uncollected.pk, "running")
        # No collector is free to attach: its commands still begin, within a reconcile
        # round (they wait at the gate for GATE_PATIENCE_SECONDS), their output kept by the engine.
        container = docker_engine.containers.get(DockerExecutor(TEST_INSTANCE).container_name(uncollected))
        deadline = time.monotonic() + 30
        while b"up" not in container.logs():
            assert time.monotonic() < deadline, "the run's commands never began"
            time.sleep(0.2)

        for run in (collected[0], uncollected):
            assert Api(alice).post(f"/runs/{run.pk}/terminate").status_code == 202
        for run in (collected[0], uncollected):
            # Grace (3 s) plus a few seconds; generous, for a loaded machine.
            run = wait_for(run.pk, "terminated", timeout=30, removed=True)
            assert not container_left(run)
            lines = log_texts(run)  # all of its output, collected by whoever got to it
            assert lines[0] == "up" and "stopping now" in lines
        terminate_run(collected[1], actor=alice)
        wait_for(collected[1].pk, "terminated", timeout=30, removed=True)
    finally:
        small.stop()
        engine.start()


def start_embedded_console(env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The embedded default (`make run`): one Daphne process that is also the worker."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=2)
            return process, url
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise RuntimeError("the embedded console did not start: " + log_path.read_text()[-3000:])
            time.sleep(0.2)


def http_call(url: str, token: str, method: str = "GET", body: bytes | None = None) -> dict:
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/yaml",
    })
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_embedded_terminate_and_collection_when_every_collector_thread_is_busy(alice, engine, docker_engine, worker_env, tmp_path):
    # The embedded default with two collector threads: the console is its own worker.
    env = {key: value for key, value in worker_env.items() if key != "REDIS_URL"}
    env.update(RUNYARD_TASKS_IN_PROCESS="1", RUNYARD_COLLECTOR_THREADS="2")
    engine.stop()
    process, url = start_embedded_console(env, tmp_path / "embedded.log")
    try:
        command = "trap 'echo stopping now; exit 0' TERM; " + SLEEPER
        body = yaml.safe_dump({"name": "busy", "image": BUSYBOX, "run": [{"command": command}], "termination_grace": "3s"}).encode()

        def launch_there() -> Run:
            return Run.objects.get(pk=http_call(url + "/api/v1/runs", alice.token, "POST", body)["id"])

        collected = [launch_there() for _ in range(2)]
        for run in collected:
            wait_for(run.pk, "running")
            wait_for_log(run, "up")
        waiting = launch_there()
        wait_for(waiting.pk, "running")

        # A terminate does not wait for a collector thread.
        assert http_call(url + f"/api/v1/runs/{collected[0].pk}/terminate", alice.token, "POST")["status"] == "terminated"
        run = wait_for(collected[0].pk, "terminated", timeout=30, removed=True)
        assert not container_left(run)
        # The thread it freed goes to the run that had none: its output is collected.
        wait_for_log(waiting, "up")
        for run in (waiting, collected[1]):
            http_call(url + f"/api/v1/runs/{run.pk}/terminate", alice.token, "POST")
        for run in (waiting, collected[1]):
            run = wait_for(run.pk, "terminated", timeout=30, removed=True)
            assert "stopping now" in log_texts(run)
            assert not container_left(run)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        engine.start()


def test_a_full_installation_gives_a_freed_slot_to_the_team_holding_fewest(alice, charlie, engine, docker_engine, worker_env, tmp_path):
    # An installation with two slots, both taken by one team, which has more waiting.
    engine.stop()
    small = Worker({**worker_env, "RUNYARD_MAX_RUNNING": "2"}, tmp_path, name="two-slots")
    small.start()
    try:
        holders = [launch(alice, "docker", SLEEPER, termination_grace="1s") for _ in range(2)]
        for run in holders:
            wait_for(run.pk, "running")
        backlog = launch(alice, "docker", SLEEPER, termination_grace="1s")
        other = launch(charlie, "docker", SLEEPER, termination_grace="1s")
        reason = "waiting: all 2 run slots of this installation are taken"
        for run in (backlog, other):
            wait_until(lambda run=run: run_state(run.pk).status_reason == reason, 30, f"run {run.pk}'s waiting reason")
        assert Api(charlie).get(f"/runs/{other.pk}").json()["queue_position"] == 1  # first in its own team

        # alice's waiting run is older, but charlie's team holds no slot: it goes first.
        terminate_run(holders[0], actor=alice)
        wait_for(other.pk, "running", timeout=30)
        assert run_state(backlog.pk).status == "pending"
        terminate_run(holders[1], actor=alice)
        wait_for(backlog.pk, "running", timeout=30)
        for run, user in ((other, charlie), (backlog, alice)):
            terminate_run(run, actor=user)
            wait_for(run.pk, "terminated", timeout=30, removed=True)
    finally:
        small.stop()
        engine.start()


@pytest.mark.django_db(transaction=True)
def test_an_embedded_pool_thread_keeps_its_database_connection_between_jobs_and_closes_it_when_idle(monkeypatch):
    # A start in the embedded default pays no new connection to PostgreSQL, and an
    # idle console holds none.
    from django.db import connection

    from runs import tasks

    if connection.vendor != "postgresql":
        pytest.skip("a connection is kept where CONN_MAX_AGE keeps it: PostgreSQL's DATABASE_URL")
    monkeypatch.setattr(tasks, "POOL_IDLE_CLOSE_SECONDS", 1.0)
    pool = tasks.DaemonPool(1, "test-pool")
    backends: list[int] = []
    done = threading.Event()

    def job() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backends.append(cursor.fetchone()[0])
        if len(backends) == 2:
            done.set()

    for _ in range(2):
        pool.submit(tasks.close_db_after(job))
    assert done.wait(30)
    assert backends[0] == backends[1]

    def still_connected() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backends[0]])
            return cursor.fetchone()[0] == 1

    assert wait_until(lambda: not still_connected(), timeout=15)
