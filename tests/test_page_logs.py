"""The Logs tab /runs/{id}/logs/ (SPEC §5): Debian's Chromium, driven by Playwright,
against a live Daphne, a real Celery worker and real containers.

The million-line log is written straight into LogChunk rows, as a collector would
have stored it: printing a million lines from a container would take minutes, and
what is tested here is the page, not the collector (tests/test_logs.py does that).
"""

import re
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, transaction
from playwright.sync_api import expect

from runs.lifecycle import transition
from runs.models import LogChunk, Run
from runs.services import create_run
from tests.conftest import sign_in, wait_for
from tests.test_engine import launch, spec

BIG = 1_000_000
NEEDLE = "needle-xyzzy"


def row(page, n: int):
    return page.locator(f'#log .log-row[data-n="{n}"]')


def visible_lines(page) -> list[int]:
    """Line numbers of the rows wholly inside the log's visible area."""
    return page.evaluate("""() => {
        const log = document.getElementById("log");
        const top = log.getBoundingClientRect().top + log.clientTop, bottom = top + log.clientHeight;
        return [...log.querySelectorAll(".log-row")].filter((row) => {
            const box = row.getBoundingClientRect();
            return box.top >= top - 1 && box.bottom <= bottom + 1;
        }).map((row) => Number(row.dataset.n)).sort((a, b) => a - b);
    }""")


def rendered(page) -> dict[int, str]:
    """Every row in the page: line number → text as shown."""
    pairs = page.evaluate("""() => [...document.querySelectorAll("#log .log-row")]
        .map((row) => [Number(row.dataset.n), row.querySelector(".log-text").textContent])""")
    return dict(pairs)


def wait_until_visible(page, n: int, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n in visible_lines(page):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"line {n} is not in view; the view shows {visible_lines(page)[:3]}…{visible_lines(page)[-3:]}")


def big_log_run(user, lines: int = BIG) -> Run:
    """A completed run whose stored log has `lines` lines; no worker ever runs it."""
    with transaction.atomic():
        run = create_run(user=user, source=spec("echo this run is never started"), executor="local")
        for status in ("initializing", "running", "stopping"):
            transition(run.pk, status, reason="test: a log written straight to the database")
        transition(run.pk, "completed", reason="test: a log written straight to the database", exit_code=0)
    started = int(time.time()) - 3600
    chunks = []
    for first in range(1, lines + 1, 2000):
        body = []
        for n in range(first, min(first + 2000, lines + 1)):
            if n == 3:
                text = f"line 3 holds the {NEEDLE}"
            elif n % 5000 == 0:
                text = f"\x1b[32mline {n}\x1b[0m checkpoint"
            else:
                text = f"line {n}"
            body.append([started + n // 1000, 1 if n % 97 == 0 else 0, text])
        chunks.append(LogChunk(run=run, first_line=first, line_count=len(body), lines=body))
    # One INSERT a chunk, as a collector stores them: bulk_create's UNNEST would have
    # psycopg quote 30 MB of JSON as array elements in Python (8 s of this test).
    with transaction.atomic():
        for chunk in chunks:
            chunk.save(force_insert=True)
    Run.objects.filter(pk=run.pk).update(log_lines=lines, log_complete=True, container_removed_at=run.finished_at)
    return run


def test_it_follows_a_live_log_and_resumes_after_a_cut_without_gap_or_double(browser, alice, docker_engine):
    run = launch(alice, "docker", "i=0; while [ $i -lt 75 ]; do i=$((i+1)); echo tick $i; sleep 0.2; done")
    wait_for(run.pk, "running", timeout=60)
    page = browser.page
    browser.goto(f"/runs/{run.pk}/logs/")
    expect(row(page, 3).locator(".log-text")).to_have_text("tick 3")
    expect(page.locator("#log-live")).to_contain_text("Live")
    browser.screenshot("logs-live")

    cut_after = page.evaluate("() => { const n = runyardLog.lastLine(); runyardLog.socket.close(); return n; }")
    expect(page.locator("#log-live")).to_contain_text(f"resuming after line {cut_after}")
    page.wait_for_function("() => runyardLog.stats.connects >= 2")
    page.wait_for_function(f"() => runyardLog.lastLine() >= {cut_after + 5}")

    # Scrolled up, the view stays put while lines keep arriving, until "Jump to latest".
    page.wait_for_function("() => runyardLog.lastLine() >= 45")
    page.locator("#log").hover()
    page.mouse.wheel(0, -250)
    latest = page.get_by_role("button", name="Jump to latest")
    expect(latest).to_be_visible()
    assert page.evaluate("() => runyardLog.following()") is False
    shown = visible_lines(page)
    count = page.evaluate("() => runyardLog.lineCount()")
    page.wait_for_function(f"() => runyardLog.lineCount() >= {count + 3}")
    assert visible_lines(page) == shown
    browser.screenshot("logs-live-scrolled-up")
    latest.click()
    expect(latest).to_be_hidden()
    page.wait_for_function("() => runyardLog.following()")

    expect(page.locator("#log-live")).to_contain_text("completed", timeout=60000)
    expect(row(page, 75).locator(".log-text")).to_have_text("tick 75")
    assert visible_lines(page)[-1] == 75  # it followed the tail to the end
    state = page.evaluate("""() => ({count: runyardLog.lineCount(), stats: runyardLog.stats,
        texts: Array.from({length: runyardLog.lineCount()}, (_, i) => runyardLog.lineText(i + 1))})""")
    assert state["count"] == 75
    assert state["texts"] == [f"tick {n}" for n in range(1, 76)]  # 1..75, nothing missing
    assert state["stats"]["gaps"] == 0, state["stats"]
    # The server sent no line twice across the reconnect (the viewer would drop it anyway).
    assert state["stats"]["duplicates"] == 0, state["stats"]
    shown = rendered(page)
    assert sorted(shown) == list(range(min(shown), 76))
    assert all(text == f"tick {n}" for n, text in shown.items())
    browser.screenshot("logs-live-ended")


def test_it_renders_colours_and_strips_escapes_at_390px(chromium, console_url, alice, engine, docker_engine):
    run = launch(
        alice, "docker",
        r"printf '\033[31mred\033[0m plain\n'",
        r"printf '\033[1;32mbold green\033[0m on \033[44mblue\033[0m\n'",
        r"printf 'progress 10%%\rprogress 50%%\rprogress 100%%\n'",
        "echo 'a warning on stderr' >&2",
        r"printf '\033]0;a window title\007\033[?25lno escapes left\033[?25h\n'",
        "echo 'a line long enough to need sideways scrolling on a phone: " + "0123456789 " * 12 + "'",
    )
    run = wait_for(run.pk, {"completed", "failed"}, timeout=60, removed=True)
    assert run.status == "completed", run.status_reason
    phone = sign_in(chromium, console_url, alice, width=390, height=844)
    page = phone.page
    try:
        phone.goto(f"/runs/{run.pk}/logs/")
        expect(page.locator("#log-live")).to_contain_text("completed")
        red = page.locator("#log .log-row span.ansi-red")
        expect(red).to_have_text("red")
        expect(page.locator("#log span.ansi-green.ansi-bold")).to_have_text("bold green")
        expect(page.locator("#log span.ansi-bg-blue")).to_have_text("blue")
        texts = rendered(page)
        assert "red plain" in texts.values()  # stdout and stderr lines of the same instant may come in either order
        assert "progress 100%" in texts.values()  # the \r progress line, collapsed
        assert "no escapes left" in texts.values()
        assert not any("\x1b" in text or "\r" in text or "\x07" in text for text in texts.values())
        stderr = page.locator("#log .log-row", has_text="a warning on stderr")
        expect(stderr).to_have_class(re.compile(r"\bis-stderr\b"))
        # The page itself does not scroll sideways at 390 px: long lines scroll inside the log.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390

        # By keyboard, with labelled controls: "/" to search, Enter for the next hit.
        page.locator("#log").focus()
        page.keyboard.press("/")
        expect(page.get_by_label("Search the log")).to_be_focused()
        page.keyboard.type("WARNING")
        page.keyboard.press("Enter")
        expect(page.locator("#log-search-status")).to_contain_text("Hit 1 of 1")
        expect(stderr.locator("mark")).to_have_text("warning")
        expect(page.get_by_label("Go to line")).to_be_visible()
        download = page.get_by_role("link", name="Download")
        body = page.request.get(console_url + download.get_attribute("href")).text()
        assert "\x1b[31mred\x1b[0m plain\n" in body  # the raw log, escapes and all
        phone.screenshot("logs-ansi-390")
    finally:
        page.context.close()


def test_a_million_line_log_opens_at_the_tail_scrolls_searches_and_jumps(browser, alice):
    # Written from another thread: Playwright's event loop runs in this one, and the
    # status announcements (async_to_sync) refuse to run beside it.
    def write_it():
        try:
            return big_log_run(alice)
        finally:
            connection.close()  # a connection left open would keep the test database from being dropped

    with ThreadPoolExecutor(1) as thread:
        run = thread.submit(write_it).result()
    page = browser.page
    browser.goto(f"/runs/{run.pk}/logs/")
    expect(row(page, BIG).locator(".log-text")).to_have_text(f"line {BIG} checkpoint")
    wait_until_visible(page, BIG)
    expect(page.locator("#log-count")).to_have_text("1,000,000 lines")
    assert page.locator("#log .log-row").count() < 500
    browser.screenshot("logs-million-tail")

    # Line 3 is not in the page: the server searches the whole log.
    assert row(page, 3).count() == 0
    assert page.evaluate("() => runyardLog.lineText(3)") is None
    page.get_by_label("Search the log").fill(NEEDLE)
    page.get_by_label("Search the log").press("Enter")
    expect(page.locator("#log-search-status")).to_contain_text("Hit 1 of 1 · line 3", timeout=30000)
    wait_until_visible(page, 3)
    expect(row(page, 3)).to_have_class(re.compile(r"\bis-hit\b"))
    expect(row(page, 3).locator("mark")).to_have_text(NEEDLE)
    browser.screenshot("logs-million-search")

    # Hits are navigable: Enter and Shift+Enter in the field, or the buttons.
    search = page.get_by_label("Search the log")
    search.fill("checkpoint")
    search.press("Enter")
    status = page.locator("#log-search-status")
    expect(status).to_have_text("Hit 1 of 200 (more…) · line 5,000", timeout=30000)
    search.press("Enter")
    expect(status).to_have_text("Hit 2 of 200 (more…) · line 10,000")
    wait_until_visible(page, 10_000)
    search.press("Shift+Enter")
    expect(status).to_have_text("Hit 1 of 200 (more…) · line 5,000")
    wait_until_visible(page, 5_000)
    page.get_by_role("button", name="Previous hit").click()
    expect(status).to_have_text("Hit 200 of 200 (more…) · line 1,000,000")
    wait_until_visible(page, BIG)
    page.get_by_role("button", name="Next hit").click()  # past the last: the server finds no more, back to the first
    expect(status).to_have_text("Hit 1 of 200 · line 5,000", timeout=30000)
    search.press("Escape")
    expect(status).to_have_text("")

    page.locator("#log").focus()
    page.keyboard.press("End")
    wait_until_visible(page, BIG)
    page.keyboard.press("Home")
    wait_until_visible(page, 1)
    expect(row(page, 1).locator(".log-text")).to_have_text("line 1")

    page.get_by_label("Go to line").fill("500000")
    page.get_by_label("Go to line").press("Enter")
    wait_until_visible(page, 500_000)
    expect(row(page, 500_000).locator(".log-text")).to_have_text("line 500000 checkpoint")
    expect(row(page, 500_000).locator("span.ansi-green")).to_have_text("line 500000")
    expect(row(page, 500_000)).to_have_class(re.compile(r"\bis-target\b"))
    assert page.url.endswith("#L500000")
    expect(page.locator("#log-permalink")).to_have_text("Link to line 500,000")
    page.wait_for_function("() => !document.querySelector('#log .log-row.is-pending')")  # the margins load too
    neighbours = rendered(page)
    assert all(text.startswith(f"line {n}") for n, text in neighbours.items())
    assert len(neighbours) < 500
    assert page.evaluate("() => runyardLog.pagesInMemory()") <= 200
    browser.screenshot("logs-million-jump")

    # A link to a line opens the page at that line.
    other = page.context.new_page()
    other.goto(f"{browser.base_url}/runs/{run.pk}/logs/#L250000")
    wait_until_visible(other, 250_000)
    expect(row(other, 250_000)).to_have_class(re.compile(r"\bis-target\b"))
    assert other.evaluate("() => runyardLog.following()") is False
    other.close()


def test_an_outsider_cannot_open_the_logs(chromium, console_url, alice, charlie, engine):
    run = launch(alice, "local", "echo private")
    outsider = sign_in(chromium, console_url, charlie)
    try:
        response = outsider.goto(f"/runs/{run.pk}/logs/")
        assert response.status == 404
    finally:
        outsider.page.context.close()
