"""The Compare page in a real browser (Playwright driving Debian's Chromium) against
a live console and worker: runs picked on the list, one chart per metric with a
trace per run, the spec fields that differ, the summaries; another team's run is
left out with a note."""

from dashboard.compare_views import requested_ids
from tests.conftest import sign_in, wait_for
from tests.test_engine import launch
from tests.test_pages import expect_text

FINAL = {"completed", "failed", "terminated"}


def traces(page, key: str) -> int:
    return page.evaluate("(id) => document.querySelector(`#${id} .chart`).data.length", f"compare-{key}")


def finished(user, *commands, **spec):
    run = launch(user, "local", *commands, **spec)
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    return run


def test_it_reads_run_numbers_and_names_what_is_not_one():
    assert requested_ids(["3,1, 3", "2"]) == ([3, 1, 2], [])
    ids, notes = requested_ids(["1,abc,-2"])
    assert ids == [1] and notes[0].startswith("“abc” is not a run number") and "“-2”" in notes[1]


def test_two_runs_compare_on_one_chart_per_metric(browser, alice, charlie):
    loop = "for i in 1 2 3 4 5; do echo \"#runyard step=$i loss=$((100 / (i * SCALE)))\"; done"
    first = finished(alice, loop.replace("SCALE", "$SCALE"), """echo '#runyard summary {"best_loss": 20}'""",
                     env={"SCALE": "1"})
    second = finished(alice, loop.replace("SCALE", "$SCALE"), "echo '#runyard step=1 only_b=1'",
                      """echo '#runyard summary {"best_loss": 10}'""", env={"SCALE": "2"})
    foreign = finished(charlie, "echo '#runyard step=1 loss=5'")
    page = browser.page
    # Picked on the runs list: two ticks and Compare.
    browser.goto("/")
    page.check(f"#run-{first.pk} input[name=runs]")
    page.check(f"#run-{second.pk} input[name=runs]")
    page.click("#compare-button")
    page.wait_for_url(f"**/compare/?runs={second.pk},{first.pk}")
    page.wait_for_selector("#compare-loss .chart .main-svg")
    assert traces(page, "loss") == 2
    page.wait_for_selector("#compare-only_b .chart .main-svg")
    assert traces(page, "only_b") == 1  # only the run that reported it
    colours = page.evaluate("document.querySelector('#compare-loss .chart').data.map((t) => t.line.color)")
    assert len(set(colours)) == 2
    # Only what differs: the env variable, not the image.
    expect_text(page, "#compare-differences", "env.SCALE")
    differing = page.locator("#compare-differences tbody th").all_inner_texts()
    assert "env.SCALE" in differing and "image" not in differing
    assert any("only_b" in text for text in page.locator("#compare-differences td").all_inner_texts())
    expect_text(page, "#compare-summaries", "best_loss")
    assert page.locator("#compare-summaries tbody td").all_inner_texts() == ["10", "20"]
    # Smoothing draws each run's moving average over its faint raw line, in the run's colour.
    raw = page.evaluate("document.querySelector('#compare-loss .chart').data.map((t) => t.y)")
    page.locator("#compare-smooth").fill("0.5")
    page.wait_for_function("() => document.querySelector('#compare-loss .chart').data.length === 4")
    after = page.evaluate("document.querySelector('#compare-loss .chart').data.map((t) => t.y)")
    assert after[:2] == raw and after[2] != raw[0] and len(after[2]) == len(raw[0])
    assert page.evaluate("document.querySelector('#compare-loss .chart').data[2].line.color") == colours[0]
    assert "smooth=0.5" in page.url
    browser.screenshot("compare-two-runs")
    # Another team's run is left out, with a note that says only that it is not there.
    browser.goto(f"/compare/?runs={first.pk},{foreign.pk},nope")
    expect_text(page, "#compare-notes", f"no run #{foreign.pk} in your teams")
    expect_text(page, "#compare-notes", "“nope” is not a run number")
    assert page.locator("#compare-legend li").count() == 1
    assert f"#{foreign.pk}" not in page.locator("#compare-legend").inner_text()
    page.wait_for_selector("#compare-loss .chart .main-svg")
    assert traces(page, "loss") == 1
    browser.screenshot("compare-foreign-left-out")


def test_a_long_list_of_numbers_is_read_only_so_far():
    ids, notes = requested_ids([",".join(str(n) for n in range(1, 1001))])
    assert ids == list(range(1, 51)) and notes == ["Only the first 50 of 1000 numbers are read."]


def test_compare_fits_a_phone_and_asks_a_signed_out_visitor_to_sign_in(chromium, console_url, alice, engine):
    first = finished(alice, "echo '#runyard step=1 loss=2'", env={"SEED": "1"})
    second = finished(alice, "echo '#runyard step=1 loss=1'; echo a long command that a phone must scroll sideways to read in full",
                      env={"SEED": "2"})
    phone = sign_in(chromium, console_url, alice, width=390, height=844)
    try:
        phone.goto(f"/compare/?runs={first.pk},{second.pk}")
        phone.page.wait_for_selector("#compare-loss .chart .main-svg")
        assert traces(phone.page, "loss") == 2
        assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.screenshot("compare-390")
    finally:
        phone.page.context.close()
    visitor = chromium.new_context(base_url=console_url).new_page()
    try:
        visitor.goto(f"{console_url}/compare/?runs={first.pk}")
        assert "/accounts/login/" in visitor.url
    finally:
        visitor.context.close()
