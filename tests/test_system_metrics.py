"""System metrics (issue 9): a running run's CPU % and memory, read every few seconds
(RUNYARD_SYSTEM_METRICS_SECONDS, 5 by default) from its Docker engine, its Swarm
node's engine, or /proc for local processes, and stored as the metrics
`sys/cpu_percent` and `sys/memory_mib` beside the run's own. GPUs: none here, nothing
of them is tested (README)."""

import time

import pytest
from django.test import override_settings

from runs import metrics, reports
from runs.leases import take_lease
from runs.logstore import LogWriter
from runs.models import Run
from tests.conftest import EXECUTORS, Api, use_executor, wait_for, wait_until
from tests.test_engine import launch

FINAL = {"completed", "failed", "terminated"}
CPU, MEMORY = "sys/cpu_percent", "sys/memory_mib"
# Holds ~100 MiB until the sleep ends: tail keeps its last line, and /dev/zero has no newline.
# The tests' workers read every second (conftest worker_env), so a few seconds give readings.
SPIN = "timeout 6 sh -c 'while :; do :; done'"
HOLD_100_MIB = "{ head -c 100m /dev/zero; sleep 5; } | tail > /dev/null"


@pytest.fixture(params=EXECUTORS)
def executor(request, engine):
    return use_executor(request)


# A Swarm run's readings come from its node's engine through the same code as one
# engine's (NodeEngine is a DockerExecutor): the memory test covers that path.
@pytest.fixture(params=["docker", "local"])
def engine_or_local(request, engine):
    return use_executor(request)


def one_cpu(executor: str) -> dict:
    return {"preset": "cpu-1" if executor == "swarm" else "cpu-small"}  # one CPU, 1 or 2 GiB


def values(run: Run, key: str) -> list[float]:
    return [value for _, value, _ in metrics.points(run, key)]


def test_a_busy_run_shows_its_cpu_beside_its_own_metrics(alice, engine_or_local):
    executor = engine_or_local
    # Two loops: on this shared machine one alone may get less than half a CPU.
    run = launch(alice, executor, 'echo "#runyard step=1 loss=0.5"', f"{SPIN} & {SPIN}; wait; echo spun",
                 resources=one_cpu(executor))
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    cpu = values(run, CPU)
    assert cpu and max(cpu) > 50, cpu
    if executor != "local":  # a local process has no limit
        assert max(cpu) < 130, f"a run limited to one CPU used more: {cpu}"
    api = Api(alice)
    keys = api.get(f"/runs/{run.pk}/metrics").json()["keys"]
    assert {CPU, MEMORY, "loss"} <= set(keys)
    # The Plots tab asks for x=step; readings have none, so they come in seconds since the start.
    series = api.get(f"/runs/{run.pk}/metrics/{CPU}", x="step").json()
    assert series["x_axis"] == "relative"
    assert len(series["x"]) == len(cpu) and all(0 <= x < 120 for x in series["x"])
    assert series["x"] == sorted(series["x"])
    assert api.get(f"/runs/{run.pk}/metrics/loss", x="step").json()["x_axis"] == "step"


def test_a_run_holding_100_mib_shows_it(alice, executor):
    run = launch(alice, executor, HOLD_100_MIB, resources=one_cpu(executor))
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    memory = values(run, MEMORY)
    assert memory and 95 <= max(memory) <= 160, memory  # 100 MiB held, plus a few shells


def test_no_reading_is_doubled_across_a_worker_crash(alice, engine, docker_engine, celery_worker):
    # Runs until the test has seen the new collector's readings (it then touches /finish),
    # not for a fixed time that must outlast the lease changing hands on a loaded machine.
    run = launch(alice, "docker", "while [ ! -e /finish ]; do sleep 0.2; done")
    wait_until_readings(run, 2)
    celery_worker.kill()
    try:
        time.sleep(1)
    finally:
        celery_worker.start()
    restarted = time.time()
    wait_until(lambda: any(at > restarted for _, _, at in metrics.points(run, MEMORY)), 90,
               "a reading by the new collector")
    container = docker_engine.containers.get(Run.objects.get(pk=run.pk).container_id)
    assert container.exec_run(["busybox", "touch", "/finish"]).exit_code == 0
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    times = [at for _, _, at in metrics.points(run, MEMORY)]
    assert times == sorted(set(times)), "a reading stored twice, or out of order"
    assert any(at > restarted for at in times), "the new collector took no readings"


def wait_until_readings(run: Run, count: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while len(values(run, MEMORY)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} readings of run {run.pk}"
        time.sleep(0.2)


def test_system_metrics_use_none_of_the_runs_own_cap(alice):
    run = launch(alice, "local", "true")  # never started: no worker here, the test is its collector
    assert take_lease(run.pk, "test-owner")
    with override_settings(RUNYARD_METRIC_KEYS_MAX=1):
        writer = LogWriter(Run.objects.get(pk=run.pk), "test-owner")
        writer.add_system_metrics(time.time(), {CPU: 12.5, MEMORY: 3.0})
        writer.flush()
        writer = LogWriter(Run.objects.get(pk=run.pk), "test-owner")  # as after a restart
        writer._append(time.time(), 0, "#runyard step=1 loss=0.5")
        writer._append(time.time(), 0, "#runyard step=1 acc=0.5")  # a second name of its own: past the cap
        writer.flush()
    run.refresh_from_db()
    assert values(run, "loss") == [0.5] and values(run, "acc") == []
    assert run.reports_malformed == 1
    assert values(run, CPU) == [12.5]


def test_readings_go_on_in_one_row_and_read_back_whole(alice, monkeypatch):
    from runs.models import MetricChunk

    chunk_points = 60
    monkeypatch.setattr("runs.logstore.SYSTEM_CHUNK_POINTS", chunk_points)  # 720 in use: fewer fill one here

    run = launch(alice, "local", "true")  # never started: no worker here, the test is its collector
    assert take_lease(run.pk, "test-owner")
    writer = LogWriter(Run.objects.get(pk=run.pk), "test-owner")
    readings = chunk_points + 30  # each flushed on its own, as a reading every few seconds is
    start = time.time()
    api = Api(alice)
    for n in range(readings):
        writer.add_system_metrics(start + n, {CPU: float(n % 100), MEMORY: 100.0 + n})
        writer._append(start + n, 0, f"#runyard step={n} loss={1 / (n + 1)}")  # the run's own, beside them
        writer.flush()
        if n == 9:  # a reader while the run goes on sees every reading so far
            assert api.get(f"/runs/{run.pk}/metrics/{MEMORY}").json()["y"] == [100.0 + i for i in range(10)]
    rows = MetricChunk.objects.filter(run_id=run.pk)
    assert rows.filter(key=MEMORY).count() == rows.filter(key=CPU).count() == 2  # a full chunk, then the rest
    assert rows.filter(key="loss").count() == readings  # the run's own: a chunk a flush, as before
    series = api.get(f"/runs/{run.pk}/metrics/{MEMORY}", max_points=10000).json()
    assert series["total_points"] == readings and not series["downsampled"]
    assert series["y"] == [100.0 + n for n in range(readings)]
    assert series["x"] == sorted(series["x"])
    assert values(run, CPU) == [float(n % 100) for n in range(readings)]
    assert [at for _, _, at in metrics.points(run, CPU)] == [start + n for n in range(readings)]

    # A new collector (after a restart) begins a row of its own and never rewrites its predecessor's.
    again = LogWriter(Run.objects.get(pk=run.pk), "test-owner")
    again.add_system_metrics(start + readings, {MEMORY: 1.0})
    again.flush()
    assert rows.filter(key=MEMORY).count() == 3
    assert values(run, MEMORY)[-2:] == [100.0 + readings - 1, 1.0]


def test_the_plots_tab_draws_them_against_time_since_start(browser, alice, docker_engine):
    run = launch(alice, "docker", "sleep 4")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert len(values(run, MEMORY)) >= 2
    page = browser.page
    browser.goto(f"/runs/{run.pk}/plots/")  # x: step, the default
    page.wait_for_selector("#plot-sys_memory_mib .chart .main-svg")
    page.wait_for_selector("#plot-sys_cpu_percent .chart .main-svg")
    title = page.evaluate("document.querySelector('#plot-sys_memory_mib .chart').layout.xaxis.title.text")
    assert title == "seconds since start"
    xs = page.evaluate("document.querySelector('#plot-sys_memory_mib .chart').data[0].x")
    assert 0 <= min(xs) and max(xs) < 60, xs
    # The run reported nothing of its own: the hint on how to stays.
    assert page.get_by_text("This run has reported no metrics.").is_visible()
    browser.screenshot("run-plots-system-metrics")


def test_a_run_cannot_report_a_system_metric():
    with pytest.raises(reports.Malformed, match="Runyard's own system metrics"):
        reports.parse("#runyard sys/cpu_percent=1")
