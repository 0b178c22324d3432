"""`make bench-peers`: Runyard beside MLflow on the same metric work, on this machine.

    make bench-peers                       # BENCH_SCALE=small: 100,000 points ingested
    BENCH_SCALE=full make bench-peers      # 1,000,000 points ingested

MLflow is installed once into a virtualenv of its own (var/bench/mlflow-venv; the
BENCH_MLFLOW_VENV environment variable names another) and deployed as its docs say:
`mlflow server` with its backend store on PostgreSQL, a database of its own on
Runyard's server (runyard_bench_mlflow), or on SQLite when Runyard's database is
SQLite; BENCH_MLFLOW_STORE sets any SQLAlchemy URL. Runyard is served by daphne.
The bench starts both servers and stops them, by their process ids, at the end.

peers-metric-ingest: N points of one metric (100,000 small, 1,000,000 full).
MLflow: its best client path, MlflowClient().log_batch of 1,000 metrics a call
(its limit), from create_run to the last batch answered. Runyard: a run printing
`#runyard step=%d loss=%f` lines, from create to every point stored (the logs
section's ingest_row; Runyard has no HTTP path that takes metrics: a run reports
them on its output). Each MLflow try is followed by a Runyard try, so both meet the
same load; BENCH_PEERS_TRIES pairs (1), the medians.

peers-metric-read: one metric of 1,000,000 points sampled for a chart, over HTTP.
MLflow: /ajax-api/2.0/mlflow/metrics/get-history-bulk-interval with
max_results=2000, what its UI's charts call. Runyard: GET
/api/v1/runs/<id>/metrics/loss?max_points=2000. The same points on both (a
spike and a dip among them, to see whether a chart keeps them), seeded once and
kept between runs: MLflow's first and last 1,000 through log_batch and the rows
between in one INSERT of what log_batch writes (on SQLite, all through log_batch);
Runyard's as its collector stores them.

In the rows MLflow is the floor and Runyard is ours: the ratio is Runyard's time
over MLflow's (below 1: Runyard is faster). The rows land in
var/bench/peers-<scale>.json and the table is printed.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode, urlparse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ["RUNYARD_TASKS_IN_PROCESS"] = "1"
os.environ.setdefault("SECRET_KEY", "runyard-bench-only")

import django  # noqa: E402

django.setup()

from benchmarks import report  # noqa: E402
from benchmarks.common import SCALES, Row, samples, scale_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
READ_POINTS = 1_000_000
SAMPLED = 2000
BATCH = 1000  # MLflow's limit of metrics in one log_batch
EXPERIMENT = "runyard-bench"
READ_RUN = f"bench-peers-read-{READ_POINTS}"
MLFLOW_VERSION = os.environ.get("BENCH_MLFLOW_VERSION", "")  # e.g. "==3.18.0"; empty: the newest


def value(i: int, count: int) -> float:
    """The series both tools store: a falling loss, a spike at a third and a dip at two thirds."""
    if i == count // 3:
        return 50.0
    if i == 2 * count // 3:
        return -50.0
    return 1 / (i + 1)


# Run by the MLflow virtualenv's python: log `count` points of `loss` through
# log_batch, BATCH a call, and print what it took. mode "find" prints the id of a
# complete seed run (tag runyard_seeded) or nothing.
CLIENT = r'''
import json, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

mode, uri, experiment, run_name, count, batch = sys.argv[1:7]
count, batch = int(count), int(batch)
now_ms = int(time.time() * 1000)
client = MlflowClient(tracking_uri=uri)
found = client.get_experiment_by_name(experiment)
experiment_id = found.experiment_id if found else client.create_experiment(experiment)

def value(i):
    if i == count // 3:
        return 50.0
    if i == 2 * count // 3:
        return -50.0
    return 1 / (i + 1)

if mode == "ends":  # the first and the last batch of a seed; the bench writes the rest
    run = client.create_run(experiment_id, run_name=run_name)
    for first in (0, count - batch):
        client.log_batch(run.info.run_id, metrics=[Metric("loss", value(i), now_ms + i, i)
                                                   for i in range(first, first + batch)])
    client.set_terminated(run.info.run_id)
    print(json.dumps({"run_id": run.info.run_id, "now_ms": now_ms}))
    sys.exit(0)

if mode == "find":
    runs = client.search_runs([experiment_id], filter_string=f"tags.runyard_seeded = '{count}'", max_results=1)
    print(json.dumps({"run_id": runs[0].info.run_id if runs else None}))
    sys.exit(0)

started = time.perf_counter()
run = client.create_run(experiment_id, run_name=run_name)
run_id = run.info.run_id
for first in range(0, count, batch):
    client.log_batch(run_id, metrics=[Metric("loss", value(i), now_ms + i, i)
                                      for i in range(first, min(count, first + batch))])
elapsed = time.perf_counter() - started
client.set_terminated(run_id)
if mode == "seed":
    client.set_tag(run_id, "runyard_seeded", str(count))
else:
    client.delete_run(run_id)  # then `mlflow gc` removes it for good
print(json.dumps({"run_id": run_id, "seconds": elapsed}))
'''


def main() -> int:
    from django.db import connection

    from runs.executors.docker import engine_reachable

    scale = scale_name()
    if not engine_reachable():
        print("no Docker engine reachable: Runyard's runs need one (see README)")
        return 1
    if connection.vendor == "sqlite":
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    else:
        connection.creation.create_test_db(verbosity=0, keepdb=True, serialize=False)  # a seeded database is large
    ctx = bench_context(scale)
    python = mlflow_venv()
    store = ctx.mlflow_store = mlflow_store(connection)
    print(f"Runyard beside MLflow, scale {scale}, {os.cpu_count()} cores; Runyard on {connection.vendor}, "
          f"MLflow {mlflow_version(python)} on {store_kind(store)}")
    started: list[subprocess.Popen] = []
    token_row = None
    rows: list[Row] = []
    failed = False
    previous = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        mlflow_url = start_mlflow(python, store, started)
        token_row, token = bench_token(ctx.user)
        runyard_url = start_runyard(connection, started)
        print(f"mlflow server at {mlflow_url}, daphne at {runyard_url}")
        for measure in (ingest_row, read_row):
            begun = time.monotonic()
            try:
                row = measure(ctx, python, mlflow_url, runyard_url, token)
                rows.append(row)
                print(report.line(row))
            except Exception:
                traceback.print_exc()
                failed = True
            print(f"   ({time.monotonic() - begun:.0f} s)")
    finally:
        stop(started)
        if token_row is not None:
            token_row.delete()
        signal.signal(signal.SIGTERM, previous)
    print()
    print(report.table(rows, scale).replace("| floor |", "| MLflow (floor) |").replace("| ratio |", "| Runyard/MLflow |"))
    out = Path(ctx.settings.VAR_DIR) / "bench" / f"peers-{scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scale": scale, "database": connection.vendor, "mlflow_store": store_kind(store),
                               "mlflow": mlflow_version(python), "cpus": os.cpu_count(),
                               "rows": [row.as_dict() for row in rows]}, indent=1))
    print(f"\nrows written to {out}")
    return 1 if failed else 0


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def bench_context(scale: str) -> SimpleNamespace:
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from runs.models import Membership, Team

    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": "admin"})
    return SimpleNamespace(scale=scale, sizes=SCALES[scale], user=user, team=team, settings=settings)


# --- MLflow: its virtualenv, its store, its server -------------------------------------------

def mlflow_venv() -> Path:
    """The MLflow virtualenv's python, installed the first time (with psycopg2 for PostgreSQL)."""
    venv = Path(os.environ.get("BENCH_MLFLOW_VENV") or ROOT / "var" / "bench" / "mlflow-venv")
    python = venv / "bin" / "python"
    if (venv / "bin" / "mlflow").exists() and _has_psycopg2(python):
        return python
    print(f"installing MLflow into {venv} (once; a few minutes)", flush=True)
    if not python.exists():
        subprocess.run([os.environ.get("PYTHON", "python3"), "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           f"mlflow{MLFLOW_VERSION}", "psycopg2-binary"], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"pip could not install MLflow into {venv}")
    return python


def _has_psycopg2(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import psycopg2"], capture_output=True).returncode == 0


def mlflow_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('mlflow'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def mlflow_store(connection) -> str:
    """MLflow's backend store: BENCH_MLFLOW_STORE, else a database of its own on Runyard's
    PostgreSQL server (created if missing), else SQLite under var/bench."""
    if os.environ.get("BENCH_MLFLOW_STORE"):
        return os.environ["BENCH_MLFLOW_STORE"]
    if connection.vendor != "postgresql":
        path = Path(connection.settings_dict["NAME"]).resolve().parent / "bench" / "mlflow.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    name = "runyard_bench_mlflow"
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    given = connection.settings_dict
    user = given["USER"] or "postgres"
    password = f":{given['PASSWORD']}" if given.get("PASSWORD") else ""
    return f"postgresql+psycopg2://{user}{password}@{given['HOST'] or '127.0.0.1'}:{given['PORT'] or 5432}/{name}"


def store_kind(store: str) -> str:
    return "PostgreSQL" if store.startswith("postgres") else store.split(":")[0]


def start_mlflow(python: Path, store: str, started: list) -> str:
    port = free_port()
    artifacts = ROOT / "var" / "bench" / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(ROOT / "var" / "bench" / "peers-mlflow-server.log", "w")
    process = subprocess.Popen(
        [str(python.parent / "mlflow"), "server", "--backend-store-uri", store,
         "--default-artifact-root", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port),
         # Its default 4 workers; uvicorn's supervisor kills a worker that misses a 5 s health
         # check, which a loaded 2-core machine makes it do mid-request: give them a minute.
         "--uvicorn-opts", "--timeout-worker-healthcheck 60",
         *(["--workers", os.environ["BENCH_MLFLOW_WORKERS"]] if os.environ.get("BENCH_MLFLOW_WORKERS") else [])],
        # Without its job runner (seven huey consumers polling, for GenAI jobs): tracking
        # does not use it, and it would only load the machine MLflow is measured on.
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, "/health", log.name, timeout=300)
    return url


# --- Runyard: a token, daphne ----------------------------------------------------------------

def bench_token(user):
    from runs.models import ApiToken

    return ApiToken.issue(user, name="bench-peers")


def start_runyard(connection, started: list) -> str:
    """daphne serving Runyard on the database this process uses."""
    port = free_port()
    env = dict(os.environ, RUNYARD_TASKS_IN_PROCESS="1")
    if connection.vendor != "sqlite":
        given = urlparse(os.environ["DATABASE_URL"])
        env["DATABASE_URL"] = given._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    log = open(ROOT / "var" / "bench" / "peers-daphne.log", "w")
    daphne = Path(sys.executable).parent / "daphne"
    process = subprocess.Popen([str(daphne), "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, "/api/v1/health", log.name, timeout=120)
    return url


# --- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, path: str, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}; its output:\n{Path(log).read_text()[-3000:]}")
        try:
            status, _ = get(url, path)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}{path} did not answer in {timeout:.0f} s; see {log}")


def stop(started: list[subprocess.Popen]) -> None:
    """Each server, by its process id (and the workers of its session): TERM, then KILL."""
    for process in started:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind in its session
        except ProcessLookupError:
            pass
        process.wait()


def get(base: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    parsed = urlparse(base)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def mlflow_client(python: Path, mode: str, url: str, run_name: str, count: int) -> dict:
    done = subprocess.run([str(python), "-c", CLIENT, mode, url, EXPERIMENT, run_name, str(count), str(BATCH)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the MLflow client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mlflow_gc(python: Path, url: str, store: str, run_ids: list[str]) -> None:
    """Removes the (deleted) ingest runs for good, so MLflow's tables do not grow bench after bench."""
    done = subprocess.run([str(python.parent / "mlflow"), "gc", "--tracking-uri", url, "--backend-store-uri", store,
                           "--run-ids", ",".join(run_ids)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"    (mlflow gc of the ingest runs failed: {done.stderr.strip()[-500:]})")


# --- the rows -------------------------------------------------------------------------------

def ingest_row(ctx, python: Path, mlflow_url: str, runyard_url: str, token: str) -> Row:
    from benchmarks.logs import ingest_row as runyard_ingest

    count = ctx.sizes["metric_points"]
    # Pairs taken one after the other, MLflow then Runyard, so both see the same load.
    tries = int(os.environ.get("BENCH_PEERS_TRIES", "1"))
    a, b = count // 3, 2 * count // 3
    command = (f"awk 'BEGIN {{ for (i = 0; i < {count}; i++) "
               f"printf \"#runyard step=%d loss=%.6f\\n\", i, (i == {a} ? 50 : (i == {b} ? -50 : 1 / (i + 1))) }}'")
    once = SimpleNamespace(**{**vars(ctx), "sizes": {**ctx.sizes, "repeats": 1}})
    mlflow_times, runyard_times, run_ids, notes = [], [], [], []
    for attempt in range(tries):
        answer = mlflow_client(python, "ingest", mlflow_url, f"bench-peers-ingest-{count}", count)
        mlflow_times.append(answer["seconds"])
        run_ids.append(answer["run_id"])
        print(f"    MLflow try {attempt + 1}: {answer['seconds']:.2f} s, {count / answer['seconds']:,.0f} points/s",
              flush=True)
        runyard, _ = runyard_ingest(once, "bench-peers-ingest", command, lines=0, points=count, unit="points")
        runyard_times.append(runyard.ours)
        notes = runyard.notes
    mlflow_gc(python, mlflow_url, ctx.mlflow_store, run_ids)
    mlflow_s, runyard_s = statistics.median(mlflow_times), statistics.median(runyard_times)
    return Row("peers-metric-ingest", f"{count:,} points", mlflow_s, runyard_s,
               f"MLflow log_batch, {BATCH:,} a call", max_ratio=1.0,
               rate=count / runyard_s, rate_unit="points/s",
               notes=[f"MLflow {count / mlflow_s:,.0f} points/s, Runyard {count / runyard_s:,.0f} points/s "
                      f"(a run printing reports, create to all stored; {'; '.join(notes)}); median of {tries} "
                      f"pair(s) of tries; Runyard {mlflow_s / runyard_s:.1f}× MLflow's rate"])


def read_row(ctx, python: Path, mlflow_url: str, runyard_url: str, token: str) -> Row:
    mlflow_run = mlflow_seeded(python, mlflow_url, ctx.mlflow_store)
    runyard_run = seeded_run(ctx, READ_POINTS)

    mlflow_path = "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?" + urlencode(
        {"run_ids": mlflow_run, "metric_key": "loss", "max_results": SAMPLED})
    runyard_path = f"/api/v1/runs/{runyard_run.pk}/metrics/loss?" + urlencode({"max_points": SAMPLED})
    auth = {"Authorization": f"Bearer {token}"}

    def mlflow_read():
        status, body = get(mlflow_url, mlflow_path)
        if status != 200:
            raise RuntimeError(f"MLflow answered {status}: {body[:500]!r}")
        return [point["value"] for point in json.loads(body)["metrics"]]

    def runyard_read():
        status, body = get(runyard_url, runyard_path, auth)
        if status != 200:
            raise RuntimeError(f"Runyard answered {status}: {body[:500]!r}")
        return json.loads(body)["y"]

    mlflow_values, runyard_values = mlflow_read(), runyard_read()  # also a warm-up of each
    repeat = 5
    mlflow_s = statistics.median(samples(mlflow_read, repeat))
    runyard_s = statistics.median(samples(runyard_read, repeat))

    def kept(values):
        return "kept" if 50.0 in values and -50.0 in values else "lost"

    return Row("peers-metric-read", f"{READ_POINTS:,} points to {SAMPLED:,}", mlflow_s, runyard_s,
               f"MLflow get-history-bulk-interval, max_results={SAMPLED}", max_ratio=1.0,
               notes=[f"median of {repeat} GETs each over HTTP (mlflow server, daphne); MLflow "
                      f"{len(mlflow_values):,} points back, spike and dip {kept(mlflow_values)}; Runyard "
                      f"{len(runyard_values):,} points back, spike and dip {kept(runyard_values)}; "
                      f"Runyard {mlflow_s / runyard_s:.1f}× faster"])


def mlflow_seeded(python: Path, url: str, store: str) -> str:
    """The MLflow run holding the READ_POINTS points, seeded the first time. On PostgreSQL its
    first and last 1,000 points go through log_batch and the rows between are written
    in one INSERT as log_batch writes them (key, value, timestamp, run, step, is_nan;
    latest_metrics from the last batch): minutes instead of most of an hour on a busy
    machine. On another store, all of it through log_batch."""
    if not store.startswith("postgresql"):
        found = mlflow_client(python, "find", url, READ_RUN, READ_POINTS)["run_id"]
        if found is None:
            print(f"    seeding MLflow with {READ_POINTS:,} points through log_batch (once)", flush=True)
            found = mlflow_client(python, "seed", url, READ_RUN, READ_POINTS)["run_id"]
        return found
    import psycopg

    dsn = store.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT t.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                         "WHERE t.key = 'runyard_seeded' AND t.value = %s AND r.lifecycle_stage = 'active' "
                         "LIMIT 1", [str(READ_POINTS)]).fetchone()
        if row is not None:
            return row[0]
        print(f"    seeding MLflow with {READ_POINTS:,} points (once; kept in its store)", flush=True)
        began = time.monotonic()
        ends = mlflow_client(python, "ends", url, READ_RUN, READ_POINTS)
        run_id, now_ms, n = ends["run_id"], ends["now_ms"], READ_POINTS
        with db.transaction():
            db.execute(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "SELECT 'loss', CASE WHEN i = %(a)s THEN 50.0 WHEN i = %(b)s THEN -50.0 "
                "ELSE 1.0::float8 / (i + 1) END, %(now)s + i, %(run)s, i, false "
                "FROM generate_series(%(first)s, %(last)s) AS i",
                {"a": n // 3, "b": 2 * n // 3, "now": now_ms, "run": run_id, "first": BATCH, "last": n - BATCH - 1})
            db.execute("INSERT INTO tags (key, value, run_uuid) VALUES ('runyard_seeded', %s, %s)", [str(n), run_id])
        print(f"    seeded in {time.monotonic() - began:.0f} s")
        return run_id


def seeded_run(ctx, count: int):
    """A completed run holding `loss` of `count` points (value() of each step), stored
    as the collector stores it (as benchmarks/metrics.py seeds its run)."""
    from django.db import transaction

    from runs.models import MetricChunk, Run

    run = Run.objects.filter(name=READ_RUN, team=ctx.team).first()
    if run is not None and MetricChunk.objects.filter(run=run).exists():
        if run.container_removed_at is None:  # one seeded before it was marked so
            Run.objects.filter(pk=run.pk).update(container_removed_at=run.created_at)
        return run
    with transaction.atomic():  # all of it or none: an interrupted seed is done again
        return _seed(ctx, count)


def _seed(ctx, count: int):
    from django.utils import timezone

    from runs.metrics import metric_chunk
    from runs.models import MetricChunk, ResourcePreset, Run

    # No container was ever made: marked removed, or the reconciler would try to stop one.
    run = Run.objects.create(name=READ_RUN, owner=ctx.user, team=ctx.team, status="completed", spec={},
                             executor="docker", log_complete=True, container_removed_at=timezone.now(),
                             preset=ResourcePreset.objects.order_by("pk").first())
    now = time.time()
    batch = []
    for first in range(0, count, 2000):
        points = [(i, value(i, count), now + i * 0.001) for i in range(first, min(count, first + 2000))]
        batch.append(metric_chunk(run.pk, "loss", points))
        if len(batch) == 50:
            MetricChunk.objects.bulk_create(batch)
            batch = []
    MetricChunk.objects.bulk_create(batch)
    return run


if __name__ == "__main__":
    sys.exit(main())
