"""What a run reports as its summary (runyard.summary, or a `#runyard summary {...}`
line), read back through the API and the Summary tab; and when a running run's
progress counts as stalled."""

import time

import pytest
import yaml
from django.conf import settings

from runs import reports
from runs.executors.base import LogFrame
from runs.leases import LeaseLost, take_lease
from runs.logstore import LogWriter
from runs.models import Run
from runs.services import create_run
from tests.conftest import Api, wait_for, wait_until
from tests.test_engine import launch, log_texts
from tests.test_metrics import FINAL, PYTHON, python_image
from tests.test_pages import expect_text


def test_it_parses_a_summary_line():
    report = reports.parse('#runyard summary {"best_acc": 0.93, "epochs": 3, "arch": "resnet 50", "done": true}')
    assert report.summary == {"best_acc": 0.93, "epochs": 3, "arch": "resnet 50", "done": "true"}
    assert report.metrics == {} and report.progress is None


@pytest.mark.parametrize("line, problem", [
    ("#runyard summary", "expects a JSON object"),
    ("#runyard summary best=1", "expects a JSON object"),
    ("#runyard summary {}", "non-empty JSON object"),
    ("#runyard summary [1, 2]", "non-empty JSON object"),
    ('#runyard summary {"bad name": 1}', "not a summary name"),
    ('#runyard summary {"x": NaN}', "finite"),
    ('#runyard summary {"x": 1e999}', "finite"),
    ('#runyard summary {"x": [1]}', "number or text"),
    ('#runyard summary {"x": "%s"}' % ("a" * 1001), "longer than 1000"),
])
def test_it_names_what_is_wrong_with_a_malformed_summary(line, problem):
    with pytest.raises(reports.Malformed, match=problem):
        reports.parse(line)


def test_a_shell_script_reports_a_summary_with_echo(alice, engine):
    run = launch(alice, "local",
                 "echo before",
                 """echo '#runyard summary {"best_acc": 0.5, "arch": "resnet 50"}'""",
                 """echo '#runyard summary {"best_acc": 0.93, "epochs": 3}'""",   # best_acc replaced
                 "echo '#runyard summary {oops}'",                                   # malformed: kept, counted
                 "echo after")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    assert log_texts(run) == ["before", "#runyard summary {oops}", "after"]
    body = Api(alice).get(f"/runs/{run.pk}").json()
    assert body["summary"] == {"best_acc": 0.93, "arch": "resnet 50", "epochs": 3}
    assert body["reports_malformed"] == 1
    assert body["stalled"] is False


def test_python_reports_a_summary_and_the_summary_tab_shows_it(browser, alice, docker_engine):
    python_image(docker_engine)
    script = (
        "import runyard\n"
        "runyard.log({'loss': 0.5}, step=1)\n"
        "runyard.summary({'best_loss': 0.25, 'note': 'line one\\nline two'})\n"
        "print('done')\n"
    )
    source = yaml.safe_dump({"name": "py-summary", "image": PYTHON,
                             "run": [{"command": f"python - <<'PY'\n{script}PY"}]})
    run = create_run(user=alice, source=source, executor="docker")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.summary == {"best_loss": 0.25, "note": "line one\nline two"}
    assert log_texts(run) == ["done"] and run.reports_malformed == 0
    browser.goto(f"/runs/{run.pk}/")
    expect_text(browser.page, "#run-summary-values", "best_loss")
    expect_text(browser.page, "#run-summary-values", "0.25")
    browser.screenshot("run-summary-values")


def test_a_teammate_sees_the_summary_and_an_outsider_does_not(alice, bob, charlie, engine):
    run = launch(alice, "local", """echo '#runyard summary {"acc": 1}'""")
    wait_for(run.pk, FINAL, removed=True)
    assert Api(bob).get(f"/runs/{run.pk}").json()["summary"] == {"acc": 1}
    assert Api(charlie).get(f"/runs/{run.pk}").status_code == 404


def test_a_summary_is_stored_with_its_lines_and_a_collector_that_lost_its_lease_stores_none(alice):
    # The LogWriter on its own (no worker: the run is never started), as a collector
    # crash and a second collector taking over would drive it.
    run = create_run(user=alice, source=yaml.safe_dump({"name": "s", "image": "runyard/busybox:latest",
                                                        "run": [{"command": "true"}]}), executor="local")

    def line(cursor, text):
        return LogFrame(cursor=cursor, time=1000.0 + cursor, stream=0, data=text.encode() + b"\n")

    assert take_lease(run.pk, "first")
    first = LogWriter(Run.objects.get(pk=run.pk), "first")
    first.add(line(1, "epoch 1"))
    first.add(line(2, '#runyard summary {"acc": 0.5, "arch": "x"}'))
    first.flush()
    Run.objects.filter(pk=run.pk).update(lease_until=None)  # its lease ran out
    assert take_lease(run.pk, "second")
    second = LogWriter(Run.objects.get(pk=run.pk), "second")
    second.add(line(3, '#runyard summary {"acc": 0.9}'))
    second.flush()
    # The first, unaware, goes on: its flush is refused whole, its summary with its lines.
    first.add(line(3, '#runyard summary {"acc": 0.1, "stale": 1}'))
    with pytest.raises(LeaseLost):
        first.flush()
    run = Run.objects.get(pk=run.pk)
    assert run.summary == {"acc": 0.9, "arch": "x"}
    assert log_texts(run) == ["epoch 1"] and run.log_cursor == 3


# ---------------------------------------------------------------- stalled


def test_progress_that_has_not_moved_for_the_limit_is_stalled():
    samples = []
    for at, progress in [(1000.0, 0.1), (1010.0, 0.2), (1020.0, 0.2), (1030.0, 0.2)]:
        samples = reports.add_progress_sample(samples, at, progress)
    # It last moved at 1010: the same value reported again does not count as moving.
    assert reports.progress_still_since(samples) == 1010.0
    assert not reports.is_stalled(samples, now=1500.0, stalled_seconds=600)
    assert reports.is_stalled(samples, now=1610.0, stalled_seconds=600)
    # Done is never stalled; nothing reported cannot be told.
    done = reports.add_progress_sample(samples, 1040.0, 1.0)
    assert not reports.is_stalled(done, now=99999.0, stalled_seconds=600)
    assert not reports.is_stalled([], now=99999.0, stalled_seconds=600)
    assert reports.stalls_in(samples, now=1500.0, stalled_seconds=600) == 110.0


def test_a_running_run_whose_progress_stopped_shows_stalled(browser, alice):
    # The console and worker are shared by the session, so RUNYARD_STALLED_SECONDS
    # cannot be made small for them: the run's progress sample is set back in time
    # instead, to a few seconds short of the limit, and the open pages must notice
    # when it passes, with no message to tell them.
    run = launch(alice, "local", "echo '#runyard progress=0.3'; sleep 120")
    wait_for(run.pk, "running")
    wait_until(lambda: Run.objects.get(pk=run.pk).progress == 0.3, 30, "the progress report")
    api = Api(alice)
    assert api.get(f"/runs/{run.pk}").json()["stalled"] is False

    def stalls_in(seconds):
        at = time.time() - settings.RUNYARD_STALLED_SECONDS + seconds
        Run.objects.filter(pk=run.pk).update(progress_samples=[[at - 30, 0.2], [at, 0.3], [at + 20, 0.3]])

    stalls_in(5)
    browser.goto("/")
    assert "stalled" not in browser.page.inner_text(f"#run-{run.pk}")
    expect_text(browser.page, f"#run-{run.pk}", "stalled")  # the list looked again when it passed
    body = api.get(f"/runs/{run.pk}").json()
    assert body["stalled"] is True and body["eta_seconds"] is None  # its old rate tells nothing now
    browser.screenshot("runs-list-stalled")
    stalls_in(5)
    browser.goto(f"/runs/{run.pk}/")
    assert "stalled" not in browser.page.inner_text("#run-head h1")
    expect_text(browser.page, "#run-head h1", "stalled")
    browser.screenshot("run-head-stalled")
    api.post(f"/runs/{run.pk}/terminate")
    run = wait_for(run.pk, "terminated", removed=True)
    assert api.get(f"/runs/{run.pk}").json()["stalled"] is False  # only a running run stalls
