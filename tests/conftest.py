"""Shared fixtures. The tests talk to the real things: PostgreSQL (DATABASE_URL),
Redis and a real Celery worker (REDIS_URL), the Docker engine.

RUNYARD_REQUIRE_SERVICES=1 (set by .ci/run) turns a missing engine, database or
broker into a failure instead of a skip.
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections

REQUIRE = os.environ.get("RUNYARD_REQUIRE_SERVICES") == "1"
# Playwright's sync API keeps an event loop running in the test thread; the tests'
# own database calls are still plain sync code in that thread.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
ROOT = Path(__file__).resolve().parent.parent
TEST_INSTANCE = "t" + os.urandom(3).hex()
# Pinned, in this process and (through worker_env) in the worker and the console:
# a process that first asks between two tests, when a transactional test has
# emptied the tables, must not make up an instance of its own.
settings.RUNYARD_INSTANCE_ID = TEST_INSTANCE
BUSYBOX = "runyard/busybox:latest"
pytest_plugins = ["tests.swarm_lab"]


def _flush_again_after_a_deadlock():
    """A transactional test ends by emptying the tables (Django's flush). A worker still
    finishing that test's run may hold a row lock then, and PostgreSQL may pick the flush as
    a deadlock's victim; or the worker stores a last log chunk between the flush's delete of
    the chunks and its delete of the runs, and the deferred foreign key fails at the commit.
    Either way the flush is tried again, as the worker's side would be."""
    from django.core.management.commands import flush
    from django.db.utils import IntegrityError, OperationalError

    def raced(cause):
        return isinstance(cause, IntegrityError) or (isinstance(cause, OperationalError) and "deadlock" in str(cause))

    handle = flush.Command.handle

    def handle_retrying(self, **options):
        for attempt in range(3):
            try:
                return handle(self, **options)
            except Exception as exc:  # CommandError wraps the database's error
                cause = exc.__cause__ or exc
                if attempt == 2 or not raced(cause):
                    raise
                time.sleep(0.5)

    flush.Command.handle = handle_retrying


_flush_again_after_a_deadlock()


def _flush_by_delete_on_postgresql():
    """Django empties the tables after each transactional test with one TRUNCATE of
    every table: PostgreSQL then makes and syncs new files for each table and index
    (seconds under load) and waits for every connection's locks on every table. A
    test leaves a few rows: deleting them, all foreign keys deferred to the commit
    (Django makes them deferrable), empties the same tables in a fraction of the time."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or allow_cascade or not tables:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return ["SET CONSTRAINTS ALL DEFERRED;"] + [f"DELETE FROM {self.quote_name(table)};" for table in tables]

    DatabaseOperations.sql_flush = sql_flush


_flush_by_delete_on_postgresql()


def missing(what: str):
    if REQUIRE:
        pytest.fail(f"{what} (RUNYARD_REQUIRE_SERVICES=1)")
    pytest.skip(what)


def docker_reachable() -> bool:
    from runs.executors.docker import engine_reachable

    return engine_reachable()


@pytest.fixture(scope="session")
def docker_engine():
    if not docker_reachable():
        missing("no Docker engine reachable")
    import docker

    client = docker.from_env()
    try:
        client.images.get(BUSYBOX)
    except docker.errors.ImageNotFound:
        missing(f"image {BUSYBOX} is missing: run images/build.sh")
    yield client
    for container in client.containers.list(all=True, filters={"label": f"runyard.instance={TEST_INSTANCE}"}):
        container.remove(force=True)


# What the tests hash the personas' passwords with (fast_password_hashing).
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fast_password_hashing(request, settings):
    """Every persona's password takes half a second to hash with the real hasher, and most
    tests make two or three: hashing is not what they test. Browsers are signed in with a
    session made here (sign_in). A test marked `real_passwords` signs in through the
    console's own form, in another process: it keeps the real hashers."""
    if not request.node.get_closest_marker("real_passwords"):
        settings.PASSWORD_HASHERS = FAST_HASHERS


@pytest.fixture
def defaults(db):
    make_defaults()


def make_defaults():
    """The presets and the default team every installation has."""
    from decimal import Decimal

    from runs.models import ResourcePreset, Team

    ResourcePreset.objects.get_or_create(
        name="cpu-small", defaults={"cpus": Decimal("1"), "memory_mb": 2048, "credits_per_hour": Decimal("1")}
    )
    ResourcePreset.objects.get_or_create(
        name="tiny", defaults={"cpus": Decimal("0.5"), "memory_mb": 64, "credits_per_hour": Decimal("3600")}
    )
    _use_test_instance()
    Team.objects.get_or_create(name="default")


def _use_test_instance():
    """Label this session's containers with its own id, in this process and the worker."""
    from runs.executors import instance_id
    from runs.models import Installation

    Installation.objects.exclude(instance_id=TEST_INSTANCE).delete()
    Installation.objects.get_or_create(instance_id=TEST_INSTANCE)
    instance_id.cache_clear()


def _user(username: str, team: str, role: str = "member"):
    from django.contrib.auth import get_user_model

    from runs.models import ApiToken, Membership, Team

    user = get_user_model().objects.create_user(username=username, password="pw-" + username)
    Membership.objects.filter(user=user).delete()
    team_obj, _ = Team.objects.get_or_create(name=team)
    Membership.objects.create(user=user, team=team_obj, role=role)
    user.token = ApiToken.issue(user)[1]
    return user


@pytest.fixture
def alice(defaults):
    return _user("alice", "vision")


@pytest.fixture
def bob(defaults):
    """alice's teammate."""
    return _user("bob", "vision")


@pytest.fixture
def charlie(defaults):
    """An outsider: another team."""
    return _user("charlie", "speech")


@pytest.fixture
def tina(defaults):
    """An admin of alice's team (not staff)."""
    return _user("tina", "vision", role="admin")


@pytest.fixture
def viola(defaults):
    """A viewer in alice's team."""
    return _user("viola", "vision", role="viewer")


class Api:
    """Django's test client speaking to API v1 with a bearer token."""

    def __init__(self, user):
        from django.test import Client

        self.client = Client()
        self.headers = {"Authorization": f"Bearer {user.token}"} if user else {}

    def get(self, endpoint, **params):
        return self.client.get("/api/v1" + endpoint, params, headers=self.headers)

    def post(self, endpoint, body=None, content_type="application/yaml"):
        return self.client.post("/api/v1" + endpoint, body or "", content_type=content_type, headers=self.headers)


@pytest.fixture
def api(alice):
    return Api(alice)


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker):
    """The environment a Celery worker needs to work on the test database."""
    if not os.environ.get("REDIS_URL") or settings.RUNYARD_TASKS_IN_PROCESS:
        missing("REDIS_URL is not set: the Celery worker tests need Redis")
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        missing("DATABASE_URL is not PostgreSQL")
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with django_db_blocker.unblock():
        _use_test_instance()
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "RUNYARD_VAR_DIR": str(settings.VAR_DIR),
        "RUNYARD_INSTANCE_ID": TEST_INSTANCE,
        "RUNYARD_COLLECTOR_LEASE_SECONDS": "6",
        "RUNYARD_RECONCILE_SECONDS": "2",
        "RUNYARD_SYSTEM_METRICS_SECONDS": "1",  # readings within a short test run
        # A killed console's terminal sessions end on record within seconds (it beats every 3 s).
        "RUNYARD_CONSOLE_LOST_SECONDS": "12",
        "PYTHONUNBUFFERED": "1",
    }


class Worker:
    """A real Celery deployment on the test database, as README's "Full deployment"
    runs it: a `control` worker (start, stop, dispatch, reconcile; with beat) and a
    `collect` worker (the collectors, one thread per running run), so a terminate is
    never queued behind collectors. Both consume from the same Redis."""

    def __init__(self, env, log_dir: Path, *, control_threads: int = 8, collect_threads: int = 24, name: str = "worker"):
        self.env, self.log_dir, self.processes, self.starts = env, log_dir, [], 0
        self.threads = {"control": control_threads, "collect": collect_threads}
        self.name = name

    def start(self):
        self.starts += 1
        self.processes = []
        logs = []
        for queue, threads in self.threads.items():
            path = self.log_dir / f"{self.name}-{queue}-{self.starts}.log"
            beat = ["-B", "-s", str(self.log_dir / f"{self.name}-beat-schedule")] if queue == "control" else []
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "dashboard", "worker", *beat, "-Q", queue,
                 "-n", f"{self.name}-{queue}-{TEST_INSTANCE}@%h", "--pool", "threads",
                 "--concurrency", str(threads), "--loglevel", "INFO",
                 # Nothing here asks the workers to sync revokes or clocks: mingle would
                 # only wait a second for neighbours at every start (a dozen in a run).
                 "--without-mingle", "--without-gossip"],
                cwd=ROOT, env=self.env, stdout=open(path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
            ))
            logs.append(path)
        deadline = time.monotonic() + 60
        waiting = list(zip(self.processes, logs))
        while waiting and time.monotonic() < deadline:
            for process, path in list(waiting):
                if b"ready." in path.read_bytes():
                    waiting.remove((process, path))
                elif process.poll() is not None:
                    self.stop()
                    raise RuntimeError("celery worker exited: " + path.read_text()[-3000:])
            time.sleep(0.2)
        if waiting:
            self.stop()
            raise RuntimeError("celery worker did not become ready in 60 s")

    def kill(self):
        """kill -9, as a crash would."""
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def celery_worker(worker_env, tmp_path_factory):
    log_dir = Path(os.environ.get("RUNYARD_TEST_ARTIFACTS", tmp_path_factory.mktemp("worker")))
    log_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(worker_env, log_dir)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def engine(transactional_db, defaults, celery_worker):
    """A live run engine: the committed test database and a real worker."""
    return celery_worker


def wait_for(run_id: int, statuses, timeout: float = 60.0, *, removed: bool = False):
    """Poll until the run reaches one of `statuses` (and, if asked, its container is gone)."""
    from runs.models import Run

    if isinstance(statuses, str):
        statuses = {statuses}
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = Run.objects.get(pk=run_id)
        if run.status in statuses and (not removed or run.container_removed_at):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} is {run.status} ({run.status_reason!r}), not {statuses} after {timeout} s")


def wait_until(condition, timeout: float = 60, what: str = "condition"):
    """Poll `condition` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached after {timeout} s")


class ConsoleUrl(str):
    """The live console's address; `pid` is its Daphne process, `log` the file of what it logs."""

    pid: int
    log: Path


@pytest.fixture(scope="session")
def console_url(worker_env, tmp_path_factory):
    """A real Daphne serving the console on the test database (as `make run` does)."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Kept with the worker's logs where CI keeps artifacts: a failed page test is read from it.
    log_dir = Path(os.environ["RUNYARD_TEST_ARTIFACTS"]) if os.environ.get("RUNYARD_TEST_ARTIFACTS") else tmp_path_factory.mktemp("console")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "daphne.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
        cwd=ROOT, env=worker_env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = ConsoleUrl(f"http://127.0.0.1:{port}")
    url.pid = process.pid  # Daphne's, for tests that read its memory
    url.log = log_path
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=2)
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the console did not start: " + log_path.read_text()[-3000:])
            time.sleep(0.2)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(20)


SCREENSHOTS = Path(os.environ.get("RUNYARD_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, driven by Playwright (its own browser download does not work here)."""
    if not Path("/usr/bin/chromium").exists():
        missing("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    # Playwright's assertions wait 5 s by default: a page on a loaded two-core machine
    # (the worker, Daphne, PostgreSQL and the run's containers beside it) can take longer.
    expect.set_options(timeout=15_000)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


class Browser:
    """A signed-in browser page on the live console, that keeps screenshots."""

    def __init__(self, page, base_url: str):
        self.page, self.base_url = page, base_url

    def goto(self, path: str):
        return self.page.goto(self.base_url + path)

    def screenshot(self, name: str):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(chromium, console_url, user, *, width=1280, height=900) -> Browser:
    """A browser context holding a session for `user`, made as Django's test client makes
    one (the sign-in form itself is tested in test_pages), on the console's home page."""
    from django.conf import settings as django_settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    context = chromium.new_context(viewport={"width": width, "height": height}, base_url=console_url)
    context.add_cookies([{
        "name": django_settings.SESSION_COOKIE_NAME, "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
        "url": console_url, "httpOnly": True, "sameSite": "Lax",
    }])
    page = context.new_page()
    page.set_default_timeout(20000)
    page.goto(console_url + "/")
    return Browser(page, console_url)


@pytest.fixture
def browser(chromium, console_url, alice, engine):
    """alice, signed in to a live console with a live worker behind it."""
    signed_in = sign_in(chromium, console_url, alice)
    yield signed_in
    signed_in.page.context.close()


def in_thread(coroutine_function, *args):
    """Run a websocket conversation in a thread of its own: once a browser test has
    started Playwright, its event loop holds the main thread and async_to_sync
    refuses to run there."""

    def conversation():
        try:
            # async_to_sync, not asyncio.run: the consumer's queries come back to this
            # thread, whose connections are closed below.
            return async_to_sync(coroutine_function)(*args)
        finally:
            connections.close_all()  # what the conversation's own queries opened in this thread

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(conversation).result()


# The executors a lifecycle test runs on: one engine, local processes, and a Swarm.
EXECUTORS = ["docker", "local", "swarm"]
# For logs, terminals and system readings: a Swarm run's come from its node's engine
# through the one-engine code (NodeEngine is a DockerExecutor); test_swarm.py reads them
# on a worker node (100,000 lines, a shell and an attach), so these suites skip the lab.
ENGINE_EXECUTORS = ["docker", "local"]


def use_executor(request) -> str:
    """For an `executor` fixture parametrized with EXECUTORS: what that executor needs."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    if request.param == "swarm":
        request.getfixturevalue("lab_cluster")  # a three-node Swarm of real engines
    return request.param


@pytest.fixture
def lab_cluster(swarm_lab, engine):
    """The swarm lab registered as cluster `lab`, as `make cluster` does, with its presets:
    cpu-1 and cpu-2 (one or two CPUs: the lab's nodes have two each) and gpu-1 (one of
    the fake GPUs that n3 advertises)."""
    from django.core.management import call_command

    call_command(
        "register_cluster", "lab", "--lab", str(swarm_lab.dir),
        "--preset", "cpu-1:1:1024", "--preset", "cpu-2:2:2048", "--preset", "gpu-1:0.5:256:1",
        stdout=open(os.devnull, "w"),
    )
    from runs.models import Cluster

    return Cluster.objects.get(name="lab")
