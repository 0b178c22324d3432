"""The Plots tab and the reported progress in a real browser (Playwright driving
Debian's Chromium) against a live console, a live worker and real runs."""

from runs import metrics
from runs.models import MetricChunk, Run
from runs.services import terminate_run
from tests.conftest import sign_in, wait_for
from tests.test_engine import launch
from tests.test_pages import expect_text

FINAL = {"completed", "failed", "terminated"}


def chart_points(page, key: str) -> int:
    """How many points the browser's chart of `key` holds."""
    return page.evaluate("(id) => document.querySelector(`#${id} .chart`).data[0].x.length", f"plot-{key}")


def test_a_live_run_plots_its_metrics_and_shows_its_progress(browser, alice, docker_engine):
    # A value and 2 % of progress every 0.3 s, for 6 s; then it waits to be stopped.
    run = launch(alice, "docker",
                 "i=1; while [ $i -le 20 ]; do echo \"#runyard step=$i loss=$((100 / i)) progress=0.$(printf %02d $((i * 2)))\"; "
                 "echo step $i; i=$((i+1)); sleep 0.3; done; sleep 60")
    wait_for(run.pk, "running")
    page = browser.page
    browser.goto(f"/runs/{run.pk}/plots/")
    page.wait_for_selector("#plot-loss .chart .main-svg")
    first = int(page.get_attribute("#plot-loss", "data-points"))
    # New values arrive without a reload.
    page.wait_for_function("(n) => Number(document.querySelector('#plot-loss').dataset.points) > n", arg=first, timeout=20000)
    assert page.get_by_role("heading", name="loss").is_visible()
    browser.screenshot("run-plots-live")
    # The summary shows the progress and an ETA; the runs list tells them on hover.
    browser.goto(f"/runs/{run.pk}/")
    expect_text(page, "#progress-fact", r"\d+% · about .* left")
    browser.screenshot("run-summary-progress")
    browser.goto("/")
    expect_text(page, "#runs-body", "Running")
    title = page.get_attribute(f"#run-{run.pk} .badge", "title")
    assert "% done" in title and "left" in title, title
    terminate_run(Run.objects.get(pk=run.pk), actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_100000_points_are_drawn_thinned_and_zoom_reads_full_detail(browser, alice):
    run = launch(alice, "local",
                 "awk 'BEGIN { for (i = 0; i < 100000; i++) printf \"#runyard step=%d loss=%.6f\\n\", i, (i == 54321 ? 9 : 1 / (i + 1)) }'")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert len(metrics.points(run, "loss")) == 100000
    assert MetricChunk.objects.filter(run=run).count() < 500  # stored in chunks, not a row per point
    page = browser.page
    browser.goto(f"/runs/{run.pk}/plots/")
    page.wait_for_selector("#plot-loss .chart .main-svg")
    expect_text(page, "#plot-loss figcaption", "100,000 points, drawn as")
    drawn = chart_points(page, "loss")
    assert 100 < drawn <= 4000
    assert page.evaluate("document.querySelector('#plot-loss .chart').data[0].y.includes(9)")  # the spike survived
    browser.screenshot("run-plots-100k")
    # Zoom into steps 100..199 (what a mouse drag sends): the chart reads that range again, every point of it.
    page.evaluate("Plotly.relayout(document.querySelector('#plot-loss .chart'), {'xaxis.range[0]': 100, 'xaxis.range[1]': 199})")
    expect_text(page, "#plot-loss figcaption", "^100 points in this range")
    assert chart_points(page, "loss") == 100
    # Double-click resets: the whole run again.
    page.evaluate("Plotly.relayout(document.querySelector('#plot-loss .chart'), {'xaxis.autorange': true})")
    expect_text(page, "#plot-loss figcaption", "100,000 points, drawn as")


def test_a_run_without_metrics_says_how_to_report_them_at_390px(chromium, console_url, alice, engine):
    run = launch(alice, "local", "echo no metrics here")
    wait_for(run.pk, FINAL, removed=True)
    phone = sign_in(chromium, console_url, alice, width=390, height=844)
    try:
        phone.goto(f"/runs/{run.pk}/plots/")
        assert phone.page.get_by_text("This run has reported no metrics.").is_visible()
        assert phone.page.get_by_text("import runyard").is_visible()
        assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.screenshot("run-plots-empty-390")
    finally:
        phone.page.context.close()


def test_another_teams_plots_are_not_found(chromium, console_url, alice, charlie, engine):
    run = launch(alice, "local", "echo '#runyard loss=1'")
    wait_for(run.pk, FINAL, removed=True)
    outsider = sign_in(chromium, console_url, charlie)
    try:
        assert outsider.goto(f"/runs/{run.pk}/plots/").status == 404
        assert outsider.page.request.get(f"/api/v1/runs/{run.pk}/metrics/loss").status == 404
    finally:
        outsider.page.context.close()


def test_charts_off_screen_are_read_when_scrolled_to(browser, alice):
    names = " ".join(f"m{i:02d}=$i" for i in range(12))
    run = launch(alice, "local", f"for i in 1 2 3; do echo \"#runyard step=$i {names}\"; done")
    wait_for(run.pk, FINAL, removed=True)
    page = browser.page
    browser.goto(f"/runs/{run.pk}/plots/")
    page.wait_for_selector("#plot-m00 .chart .main-svg")
    # The last chart is far below the fold: not read yet.
    assert page.get_attribute("#plot-m11", "data-points") is None
    page.locator("#plot-m11").scroll_into_view_if_needed()
    page.wait_for_selector("#plot-m11 .chart .main-svg")
    assert page.get_attribute("#plot-m11", "data-points") == "3"
