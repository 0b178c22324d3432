"""What a run reports from inside: metrics and progress (SPEC §4), read back through
the API (SPEC §3) with an ETA, on real containers and local processes."""

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runs import metrics, reports
from runs.services import create_run
from tests.conftest import Api, wait_for
from tests.test_engine import launch, log_texts

FINAL = {"completed", "failed", "terminated"}
PYTHON = "runyard/python:3.11"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(params=["docker", "local"])
def executor(request, engine):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return request.param


def python_image(docker_engine):
    try:
        docker_engine.images.get(PYTHON)
    except Exception:
        pytest.fail(f"image {PYTHON} is missing: run images/build.sh")


# ---------------------------------------------------------------- the line format


def test_it_parses_a_report_line():
    report = reports.parse("#runyard step=10 train/loss=0.25 acc=9e-1 progress=0.5")
    assert report.step == 10 and report.progress == 0.5
    assert report.metrics == {"train/loss": 0.25, "acc": 0.9}
    assert reports.is_report("#runyard progress=1") and not reports.is_report("#runyardx=1")
    assert not reports.is_report("  #runyard x=1")


# Pieces of report lines, good and bad: the quick reading of the usual report must
# agree with the full parser wherever it answers.
_TOKENS = st.sampled_from([
    "step=7", "step=0", "step=-1", "step=1.5", "step=99999999999999999999", "loss=0.25", "loss=1e-3", "loss=1e999",
    "loss=nan", "loss=inf", "loss=1_0", "loss=+.5", "loss=-", "loss=1e", "acc=9e-1", "acc=", "new=1", "sys/cpu=1",
    "progress=0.5", "l%ss=1", "loss", "", " ", "\t", "summary", "x=1",
])


@settings(max_examples=400, deadline=None)
@given(tokens=st.lists(_TOKENS, max_size=5), cap=st.integers(min_value=1, max_value=3))
def test_the_quick_reading_of_a_usual_report_agrees_with_the_parser(tokens, cap):
    line = " ".join(["#runyard", *tokens])
    known = {"loss", "acc", "x"}
    one = reports.plain_metric(line.encode() + b"\n", known)  # the one-metric reading, of the output as it comes
    quick = reports.plain_metrics(line, known, cap)
    if quick is None:
        assert one is None
        return  # the parser reads it in full
    report = reports.parse(line, max_metrics=cap)  # never Malformed where the quick reading answered
    assert quick == (report.step, report.metrics) and report.progress is None and not report.summary
    if one is not None:
        step, name, value = one
        assert (step, {name: value}) == quick


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.lists(_TOKENS, max_size=3), min_size=1, max_size=6))
def test_a_run_of_usual_reports_is_read_at_once_as_line_by_line(lines):
    # The collector reads a batch of reports in one go (plain_metric_lines) only where
    # each line alone would give the same step, name and value (plain_metric).
    texts = [" ".join(["#runyard", *tokens]).encode() + b"\n" for tokens in lines]
    known = {"loss", "acc", "x"}
    at_once = reports.plain_metric_lines(b"".join(texts), known)
    one_by_one = [reports.plain_metric(text, known) for text in texts]
    if at_once is not None:
        name, steps, values = at_once
        assert one_by_one == [(step, name, value) for step, value in zip(steps, values)]
    elif all(one_by_one) and len({one[1] for one in one_by_one}) == 1:
        raise AssertionError(f"{texts} are all one metric's usual reports, and were not read at once")


def test_the_usual_report_is_read_quickly_and_anything_else_in_full():
    known = {"loss", "acc"}
    assert reports.plain_metrics("#runyard step=10 loss=0.25", known, 10) == (10, {"loss": 0.25})
    assert reports.plain_metrics("#runyard step=3 loss=1 acc=9e-1", known, 10) == (3, {"loss": 1.0, "acc": 0.9})
    for line in ("#runyard step=10 fresh=1",  # a name not reported before: checked in full
                 "#runyard step=1 loss=1 loss=2", "#runyard step=1 loss=1e999", "#runyard loss=1",
                 "#runyard step=1 loss=1 progress=0.5", "#runyard step=1  loss=1"):
        assert reports.plain_metrics(line, known, 10) is None, line
    assert reports.plain_metrics("#runyard step=1 loss=1 acc=2", known, 1) is None  # past the cap


@pytest.mark.parametrize("line, problem", [
    ("#runyard", "nothing reported"),
    ("#runyard step=3", "nothing reported"),
    ("#runyard loss", "expected name=value"),
    ("#runyard loss=abc", "loss must be a number"),
    ("#runyard loss=nan", "finite"),
    ("#runyard loss=inf", "finite"),
    ("#runyard step=-1 loss=1", "step must be a whole number"),
    ("#runyard step=1.5 loss=1", "step must be a whole number"),
    ("#runyard progress=1.5", "between 0 and 1"),
    ("#runyard loss=1 loss=2", "loss given twice"),
    ("#runyard l%ss=1", "not a metric name"),
])
def test_it_names_what_is_wrong_with_a_malformed_report(line, problem):
    with pytest.raises(reports.Malformed, match=problem):
        reports.parse(line)


def test_thinning_keeps_spikes_and_the_bound():
    values = [1.0] * 100_000
    values[31_337] = 50.0  # one spike in a flat line
    values[77_777] = -50.0
    picked = metrics.thin(values, 500)
    assert len(picked) <= 500
    assert picked == sorted(picked)
    kept = [values[i] for i in picked]
    assert 50.0 in kept and -50.0 in kept
    assert metrics.thin([3.0, 1.0, 2.0], 10) == [0, 1, 2]


def test_eta_follows_the_recent_rate():
    samples = []
    for second in range(0, 11):
        samples = reports.add_progress_sample(samples, 1000.0 + second, second / 100)  # 1 % a second
    assert reports.eta_seconds(samples, now=1010.0) == pytest.approx(90.0)
    assert reports.eta_seconds(samples, now=1040.0) == pytest.approx(60.0)
    assert reports.eta_seconds(samples[:1], now=1000.0) is None  # one sample tells no rate
    assert reports.eta_seconds(reports.add_progress_sample(samples, 1011.0, 1.0), now=1011.0) == 0.0
    # Progress that goes back is a new phase: its rate is told afresh.
    restarted = reports.add_progress_sample(samples, 1012.0, 0.05)
    assert restarted == [[1012.0, 0.05]] and reports.eta_seconds(restarted, now=1012.0) is None



# ---------------------------------------------------------------- long series, stored as the collector stores them


def stored_run(user, points, chunk=2000, name="stored"):
    """A finished run holding metric `m` of `points` (step or None, value, unix time), in chunks."""
    from runs.models import MetricChunk, ResourcePreset, Run

    run = Run.objects.create(name=name, spec={}, image="busybox", owner=user, team=user.teams.get(),
                             preset=ResourcePreset.objects.get(name="cpu-small"), executor="local", status="completed")
    MetricChunk.objects.bulk_create(
        (metrics.metric_chunk(run.pk, "m", points[first:first + chunk]) for first in range(0, len(points), chunk)),
        batch_size=50,
    )
    return run


def test_a_long_series_keeps_its_spike_and_dip_and_a_wide_zoom_its_extremes(alice):
    # 300,000 points thinned to 500 read the coarsest summaries, as a million do to 2,000.
    count, spike, dip = 300_000, 123_457, 276_543
    start = 1_700_000_000.0
    run = stored_run(alice, [(i, 99.0 if i == spike else -99.0 if i == dip else 1 / (i + 1), start + i / 100)
                             for i in range(count)])
    api = Api(alice)
    chart = api.get(f"/runs/{run.pk}/metrics/m", max_points=500).json()
    assert (chart["total_points"], chart["downsampled"]) == (count, True)
    assert 250 < len(chart["x"]) == len(chart["y"]) <= 500
    assert chart["x"] == sorted(chart["x"])
    assert chart["x"][chart["y"].index(99.0)] == spike and chart["x"][chart["y"].index(-99.0)] == dip
    assert chart["x"][0] == 0 and chart["y"][-1] == 1 / count  # the ends are extremes too
    # On a time axis, the same points at their times.
    wall = api.get(f"/runs/{run.pk}/metrics/m", x="wall", max_points=500).json()
    assert wall["y"] == chart["y"] and wall["x"][wall["y"].index(99.0)] == metrics._iso(start + spike / 100)
    # Zoomed to a third: still thinned, every point in range, the spike in it kept; a range with no point is empty.
    wide = api.get(f"/runs/{run.pk}/metrics/m", max_points=1000, x_min=100_000.5, x_max=200_000).json()
    assert wide["total_points"] == 100_000 and len(wide["y"]) <= 1000
    assert min(wide["x"]) == 100_001 and max(wide["x"]) == 200_000 and 99.0 in wide["y"] and -99.0 not in wide["y"]
    assert 1 / 200_001 in wide["y"]  # the lowest point of the range
    empty = api.get(f"/runs/{run.pk}/metrics/m", x_min=2_000_000).json()
    assert (empty["x"], empty["total_points"]) == ([], 0)


def test_a_zoom_reads_the_points_in_its_range_and_only_the_chunks_holding_them(alice):
    from runs.models import MetricChunk

    start = 1_700_000_000.0
    points = [(i * 10, (i * 7919) % 1000 / 10, start + i) for i in range(100_000)]
    run = stored_run(alice, points, chunk=1000)
    api = Api(alice)

    def zoom(**params):
        return api.get(f"/runs/{run.pk}/metrics/m", max_points=100_000, **params).json()

    wanted = [(s, v) for s, v, _ in points if 123_450 <= s <= 234_560]
    # The chunks outside the range are spoilt: a read of any of them would show.
    inside = MetricChunk.objects.filter(run=run, step_high__gte=123_450, step_low__lte=234_560)
    assert inside.count() == 12
    MetricChunk.objects.filter(run=run).exclude(pk__in=inside.values("pk")).update(values=b"spoilt")
    by_step = zoom(x_min=123_450, x_max=234_560)
    assert list(zip(by_step["x"], by_step["y"])) == wanted and by_step["downsampled"] is False
    # By time: seconds since the start (the run never started: its first point), or unix times.
    relative = zoom(x="relative", x_min=12_345, x_max=23_456)
    assert relative["x"] == [float(t) for t in range(12_345, 23_457)] and relative["y"] == [v for _, v in wanted]
    wall = zoom(x="wall", x_min=start + 12_345, x_max=start + 23_456)
    assert wall["y"] == relative["y"] and wall["x"][0] == metrics._iso(start + 12_345)


def test_chunks_stored_before_summaries_read_the_same(alice):
    from runs.models import MetricChunk

    points = [(None if i % 3 == 0 else i, ((i * 7919) % 1001) / 7, 1_700_000_000.0 + i / 10) for i in range(60_000)]
    points[41_234] = (41_234, 500.0, points[41_234][2])
    new = stored_run(alice, points, chunk=1500, name="new")
    old = stored_run(alice, points, chunk=1500, name="old")
    # As the migration left them: the points, nothing else.
    MetricChunk.objects.filter(run=old).update(step_low=None, step_high=None, stepless=None, time_low=None,
                                               time_high=None, summary=None, summary_coarse=None)
    half = MetricChunk.objects.filter(run=new).order_by("id").values_list("id", flat=True)[20]
    MetricChunk.objects.filter(run=new, id__lt=half).update(time_low=None, summary=None)  # old and new mixed
    for params in ({}, {"x": "relative"}, {"x": "wall", "max_points": 5000},
                   {"x_min": 1000, "x_max": 30_000, "max_points": 100_000}, {"x": "relative", "x_min": 7.5, "x_max": 900}):
        expected = metrics.series(old, "m", **params)
        assert metrics.series(new, "m", **params) == expected
    # Thinned hard, the old chunks read point by point beside summaries of the new: the spike kept, the bound kept.
    for run in (old, new):
        chart = metrics.series(run, "m", max_points=100)
        assert chart["total_points"] == 60_000 and len(chart["y"]) <= 100
        assert chart["x"][chart["y"].index(500.0)] == 41_234 and min(chart["y"]) == 0.0


def test_a_system_metric_chunk_that_grows_keeps_its_summary(alice):
    from runs.models import MetricChunk

    run = stored_run(alice, [])
    chunk = metrics.metric_chunk(run.pk, "sys/cpu", [(None, 1.0, 1_700_000_000.0)])
    chunk.save()
    grown = metrics.extended(MetricChunk(pk=chunk.pk, run_id=run.pk, key="sys/cpu", count=chunk.count, steps=chunk.steps,
                                         values=chunk.values, times=chunk.times), [None], [80.0], [1_700_000_060.0])
    grown.save(update_fields=["count", "steps", "values", "times"])
    late = metrics.series(run, "sys/cpu", x="wall", x_min=1_700_000_030.0)
    assert late["y"] == [80.0] and late["x_axis"] == "wall"
    assert metrics.series(run, "sys/cpu")["x_axis"] == "relative"

# ---------------------------------------------------------------- real runs


def test_a_shell_script_reports_with_echo(alice, executor):
    run = launch(alice, executor,
                 "echo before",
                 "for i in 1 2 3 4 5; do echo \"#runyard step=$((i * 10)) loss=0.$((10 - i)) acc=0.$i\"; done",
                 "echo '#runyard loss=oops'",           # malformed: kept in the log, counted
                 "echo '#runyard progress=0.5'",
                 "echo after")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    # Good reports are not log lines; the malformed one is, where the user sees it.
    assert log_texts(run) == ["before", "#runyard loss=oops", "after"]
    assert run.reports_malformed == 1
    assert run.progress == 0.5
    api = Api(alice)
    listed = api.get(f"/runs/{run.pk}/metrics").json()
    # The run's own metrics; its CPU and memory (sys/...) are there too if it was sampled while it ran.
    assert [key for key in listed["keys"] if not key.startswith("sys/")] == ["acc", "loss"]
    assert listed["reports_malformed"] == 1
    loss = api.get(f"/runs/{run.pk}/metrics/loss").json()
    assert loss["x"] == [10, 20, 30, 40, 50]
    assert loss["y"] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert (loss["total_points"], loss["downsampled"]) == (5, False)
    assert api.get(f"/runs/{run.pk}").json()["eta_seconds"] is None  # a finished run has no ETA


def test_python_reports_through_import_runyard(alice, engine, docker_engine):
    python_image(docker_engine)
    script = (
        "import runyard\n"
        "for step in range(20000):\n"
        "    runyard.log({'train/loss': 1.0 / (step + 1), 'spiky': 99.0 if step == 12345 else 0.0}, step=step)\n"
        "runyard.log({'bad name': 1})\n"          # warned on stderr, counted by the console
        "runyard.progress(1.0)\n"
        "print('done')\n"
    )
    source = yaml.safe_dump({"name": "py-report", "image": PYTHON,
                             "run": [{"command": f"python - <<'PY'\n{script}PY"}]})
    run = create_run(user=alice, source=source, executor="docker")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.progress == 1.0
    assert run.reports_malformed == 1
    assert "done" in log_texts(run)
    assert len(metrics.points(run, "train/loss")) == 20000
    api = Api(alice)
    keys = api.get(f"/runs/{run.pk}/metrics").json()["keys"]
    assert [key for key in keys if not key.startswith("sys/")] == ["spiky", "train/loss"]  # and its CPU and memory
    # A chart asks for what it can draw: the series is thinned, the spike survives.
    spiky = api.get(f"/runs/{run.pk}/metrics/spiky", max_points=400).json()
    assert spiky["total_points"] == 20000 and spiky["downsampled"] is True
    assert len(spiky["x"]) == len(spiky["y"]) <= 400
    assert 99.0 in spiky["y"] and spiky["x"][spiky["y"].index(99.0)] == 12345
    # Zoomed in, the range comes back at full detail.
    zoomed = api.get(f"/runs/{run.pk}/metrics/train/loss", x_min=100, x_max=199, max_points=1000).json()
    assert zoomed["x"] == list(range(100, 200)) and zoomed["downsampled"] is False
    assert zoomed["y"][0] == pytest.approx(1 / 101)
    # Time axes.
    relative = api.get(f"/runs/{run.pk}/metrics/train/loss", x="relative", max_points=10).json()
    assert all(0 <= x < 120 for x in relative["x"])
    wall = api.get(f"/runs/{run.pk}/metrics/train/loss", x="wall", max_points=10).json()
    assert wall["x"][0].endswith("Z") and wall["x"][0][:4].isdigit()


def test_a_running_run_has_an_eta(alice, executor):
    run = launch(alice, executor,
                 # 1 % every 0.25 s, up to 20 %: about 20 s left when it pauses.
                 "i=1; while [ $i -le 20 ]; do echo \"#runyard progress=0.$(printf %02d $i)\"; "
                 "i=$((i+1)); sleep 0.25; done; sleep 30")
    run = wait_for(run.pk, "running")
    api = Api(alice)
    deadline = time.monotonic() + 30
    body = api.get(f"/runs/{run.pk}").json()
    while body["eta_seconds"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        body = api.get(f"/runs/{run.pk}").json()
    # About 4 % a second: tens of seconds, not hours or nothing.
    assert body["status"] == "running" and 0 < body["progress"] <= 0.2
    assert 5 < body["eta_seconds"] < 200, body["eta_seconds"]
    api.post(f"/runs/{run.pk}/terminate")
    wait_for(run.pk, "terminated", removed=True)


def test_metric_errors_are_clear_and_scoped_to_the_team(alice, charlie, engine):
    run = launch(alice, "local", "echo '#runyard loss=1'")
    run = wait_for(run.pk, FINAL, removed=True)
    api = Api(alice)
    assert api.get(f"/runs/{run.pk}/metrics/nope").status_code == 404
    bad_x = api.get(f"/runs/{run.pk}/metrics/loss", x="sideways")
    assert bad_x.status_code == 400 and bad_x.json()["errors"][0]["loc"] == "x"
    assert api.get(f"/runs/{run.pk}/metrics/loss", max_points=1).status_code == 400
    assert api.get(f"/runs/{run.pk}/metrics/loss", x_min="soon").status_code == 400
    # Another team's run is not there at all.
    assert Api(charlie).get(f"/runs/{run.pk}/metrics").status_code == 404
    assert Api(charlie).get(f"/runs/{run.pk}/metrics/loss").status_code == 404


def test_the_train_example_reports_metrics_and_progress(alice, engine, docker_engine):
    python_image(docker_engine)
    spec = yaml.safe_load((EXAMPLES / "train.yaml").read_text())
    spec["env"]["EPOCHS"] = "1"
    run = create_run(user=alice, source=yaml.safe_dump(spec), executor="docker")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.progress == 1.0 and run.reports_malformed == 0
    assert [key for key in metrics.keys(run) if not key.startswith("sys/")] == ["train/accuracy", "train/loss"]
    assert metrics.series(run, "train/loss")["x"] == list(range(1, 11))


def test_every_example_is_a_valid_spec(db):
    from runs.spec import parse_spec

    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for path in examples:
        parse_spec(path.read_text())
