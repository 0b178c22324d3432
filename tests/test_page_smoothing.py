"""The Plots tab's smoothing slider in a real browser: an exponential moving
average drawn over the faint raw line, kept in the URL."""

from tests.conftest import wait_for
from tests.test_engine import launch

FINAL = {"completed", "failed", "terminated"}
CHART = "document.querySelector('#plot-loss .chart')"


def test_smoothing_draws_a_second_line_over_the_raw_one_and_is_kept_in_the_url(browser, alice):
    # A zig-zag: 10, 0, 10, 0, ... smoothing pulls it toward 5.
    run = launch(alice, "local", "for i in $(seq 1 40); do echo \"#runyard step=$i loss=$(( (i % 2) * 10 ))\"; done")
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    page = browser.page
    browser.goto(f"/runs/{run.pk}/plots/")
    page.wait_for_selector("#plot-loss .chart .main-svg")
    raw = page.evaluate(f"{CHART}.data[0].y")
    assert page.evaluate(f"{CHART}.data.length") == 1  # 0: the values as they are
    page.locator("#plots-smooth").fill("0.9")
    page.wait_for_function(f"() => {CHART}.data.length === 2")
    assert page.evaluate(f"{CHART}.data[0].y") == raw  # the raw line stays, faint
    assert page.evaluate(f"{CHART}.data[0].opacity") < 1
    smooth = page.evaluate(f"{CHART}.data[1].y")
    assert smooth != raw and len(smooth) == len(raw)
    assert max(smooth[10:]) - min(smooth[10:]) < 5 < max(raw) - min(raw)  # the zig-zag is flattened
    assert page.input_value("#plots-smooth") == "0.9" and "0.90" in page.inner_text("#plots-smooth-value")
    assert "smooth=0.9" in page.url
    browser.screenshot("run-plots-smoothed")
    # A reload (or the link shared) draws it smoothed again; back to 0 is raw only.
    page.reload()
    page.wait_for_function(f"() => {CHART} && {CHART}.data && {CHART}.data.length === 2")
    page.locator("#plots-smooth").fill("0")
    page.wait_for_function(f"() => {CHART}.data.length === 1")
    assert "smooth=" not in page.url
