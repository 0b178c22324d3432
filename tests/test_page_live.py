"""Live pages (issue 9): one module owns /ws/runs/ and fires DOM events, htmx fragments
read themselves again on them, under the pages' Content-Security-Policy; a run's
progress and ETA reach a keyboard and a screen reader. Playwright driving Chromium
against a live console, worker and real runs."""

import re

from playwright.sync_api import expect

from runs.models import Run, Team
from runs.services import terminate_run
from tests.conftest import Api, sign_in, wait_for, wait_until
from tests.test_engine import launch
from tests.test_pages import expect_text

# Two reports a second apart: a rate, so an ETA of about a minute; then the run waits to be stopped.
REPORTS = "sleep 1; echo '#runyard progress=0.39'; sleep 1; echo '#runyard progress=0.4'; sleep 120"
# What the page hears, and what the policy refuses, from the first script on.
LISTEN = """
window.__runEvents = [];
window.__violations = [];
for (const type of ["status", "progress", "waiting", "live", "queue", "unlisted"]) {
  document.addEventListener(`run:${type}`, (event) => window.__runEvents.push([type, event.detail.run ?? null]));
}
document.addEventListener("securitypolicyviolation", (event) => window.__violations.push(event.violatedDirective));
"""


class Watched:
    """A page's /ws/runs/ sockets and the policy violations its console reports."""

    def __init__(self, page):
        self.page, self.sockets, self.console = page, [], []
        page.add_init_script(LISTEN)
        page.on("websocket", lambda socket: self.sockets.append(socket.url) if socket.url.endswith("/ws/runs/") else None)
        page.on("console", lambda message: self.console.append(message.text) if "Content Security Policy" in message.text else None)

    def goto(self, browser, path: str):
        self.sockets.clear()
        browser.goto(path)
        self.page.wait_for_function("() => document.body.dataset.live === 'open'")
        self.page.wait_for_load_state("networkidle")  # what the page read again on run:live has come
        self.page.evaluate("window.__sameDocument = true")

    def assert_one_socket_and_no_violation(self):
        assert self.page.evaluate("window.__sameDocument") is True  # no reload happened
        assert len(self.sockets) == 1, self.sockets
        assert not self.console and not self.page.evaluate("window.__violations"), (self.console, self.page.evaluate("window.__violations"))

    def heard(self, type_: str, run_id: int) -> bool:
        return [type_, run_id] in self.page.evaluate("window.__runEvents")


def accessible_progress(page, name: str) -> dict:
    """The value and description of the progress bar called `name`, as Chromium exposes
    them to assistive technology."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    for node in nodes:
        if node.get("role", {}).get("value") == "progressbar" and node.get("name", {}).get("value") == name:
            return {"value": node["value"]["value"], "description": node.get("description", {}).get("value"),
                    "focusable": any(p["name"] == "focusable" and p["value"]["value"] for p in node.get("properties", []))}
    raise AssertionError(f"no progress bar named {name!r} in the accessibility tree")


def reach_by_tab(page, start: str, wanted_id: str, most: int = 3) -> None:
    """Focus `start`, then press Tab until `wanted_id` has the focus."""
    page.focus(start)
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == wanted_id:
            return
    raise AssertionError(f"#{wanted_id} is not reached by Tab from {start}")


def test_a_run_follows_on_the_list_and_its_page_through_one_socket_and_its_progress_is_reachable(
        browser, chromium, console_url, alice):
    page = browser.page
    watched = Watched(page)
    # A run is made once the list is open: it turns up, runs, reports its progress.
    watched.goto(browser, "/")
    run = launch(alice, "local", REPORTS)
    row = page.locator(f"#run-{run.pk}")
    expect(row.locator(".badge")).to_have_text("Running", timeout=30000)
    assert watched.heard("unlisted", run.pk)  # it was not on the list: the table read itself again
    bar = page.get_by_role("progressbar", name=f"Progress of run #{run.pk}")
    expect(bar).to_have_accessible_description(re.compile(r"^40% done · about .* left$"), timeout=30000)
    assert watched.heard("progress", run.pk)
    exposed = accessible_progress(page, f"Progress of run #{run.pk}")
    assert exposed["value"] == 40 and exposed["focusable"] and re.match(r"40% done · about .* left", exposed["description"]), exposed
    expect(row.locator(".run-progress")).to_contain_text(exposed["description"])  # on screen too
    reach_by_tab(page, f"#pick-{run.pk}", f"progress-{run.pk}")  # Compare box, then the bar
    browser.screenshot("live-list-progress")
    watched.assert_one_socket_and_no_violation()

    # On a phone, the bar and its words fit.
    phone = sign_in(chromium, console_url, alice, width=390, height=844)
    try:
        for name, path in (("live-list-progress-390", "/"), ("live-run-progress-390", f"/runs/{run.pk}/")):
            phone.goto(path)
            expect(phone.page.get_by_role("progressbar", name=f"Progress of run #{run.pk}")).to_be_visible()
            overflow = phone.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
            phone.screenshot(name)
    finally:
        phone.page.context.close()

    # Its page: the header's bar, reached from the crumbs.
    watched.goto(browser, f"/runs/{run.pk}/")
    head_bar = page.get_by_role("progressbar", name=f"Progress of run #{run.pk}")
    expect(head_bar).to_have_accessible_description(re.compile(r"^40% done · about .* left$"))
    reach_by_tab(page, "#run-head .crumbs a", f"head-progress-{run.pk}")
    browser.screenshot("live-run-progress")
    # Stopped elsewhere: the header, facts and timeline follow without a reload.
    terminate_run(Run.objects.get(pk=run.pk), actor=alice)
    expect(page.locator("#run-head .badge")).to_have_text("Terminated", timeout=30000)
    expect_text(page, "#summary-body .timeline", "Terminated")
    expect(head_bar).to_have_count(0)
    assert watched.heard("status", run.pk)
    browser.screenshot("live-run-terminated")
    watched.assert_one_socket_and_no_violation()

    # Back on the list, the row says so too.
    watched.goto(browser, "/")
    expect(row.locator(".badge")).to_have_text("Terminated")
    wait_for(run.pk, "terminated", removed=True)
    watched.assert_one_socket_and_no_violation()


def test_a_page_that_lost_its_socket_reads_itself_again_when_it_is_back(browser, alice):
    run = launch(alice, "local", "sleep 120")
    wait_for(run.pk, "running")
    page = browser.page
    watched = Watched(page)
    connection = {"silent": False, "page_side": None}

    def route(socket):
        # The real server behind; while "silent", what it says never reaches the page.
        connection["page_side"] = socket
        server = socket.connect_to_server()
        server.on_message(lambda message: None if connection["silent"] else socket.send(message))

    page.route_web_socket(re.compile(r"/ws/runs/$"), route)
    watched.goto(browser, f"/runs/{run.pk}/")
    expect(page.locator("#run-head .badge")).to_have_text("Running")
    connection["silent"] = True
    terminate_run(Run.objects.get(pk=run.pk), actor=alice)
    wait_for(run.pk, "terminated")
    page.wait_for_timeout(1000)
    expect(page.locator("#run-head .badge")).to_have_text("Running")  # the premise: nothing told it
    # The connection drops; the module connects again and the page reads itself again.
    connection["silent"] = False
    connection["page_side"].close()
    expect(page.locator("#run-head .badge")).to_have_text("Terminated", timeout=15000)
    expect_text(page, "#summary-body .timeline", "Terminated")
    assert len(watched.sockets) == 2  # the first, and the one that replaced it
    assert page.evaluate("window.__sameDocument") is True
    wait_for(run.pk, "terminated", removed=True)


def test_a_pending_run_moves_up_the_queue_on_the_list_when_the_run_ahead_leaves_it(browser, alice):
    Team.objects.filter(name="vision").update(max_running=1)
    holder = launch(alice, "local", "sleep 120")
    wait_for(holder.pk, "running")
    ahead, behind = launch(alice, "local", "echo ahead"), launch(alice, "local", "echo behind")
    wait_until(lambda: Run.objects.get(pk=behind.pk).status_reason.startswith("waiting:"), 30, "the waiting reason")
    page = browser.page
    watched = Watched(page)
    watched.goto(browser, "/")
    expect(page.locator(f"#run-{behind.pk} .waiting")).to_contain_text("#2 in the team's queue")
    page.check(f"#pick-{behind.pk}")  # picked for Compare
    assert Api(alice).post(f"/runs/{ahead.pk}/terminate").status_code == 202
    expect(page.locator(f"#run-{ahead.pk} .badge")).to_have_text("Terminated")
    expect(page.locator(f"#run-{behind.pk} .waiting")).to_contain_text("#1 in the team's queue")
    expect(page.locator(f"#pick-{behind.pk}")).to_be_checked()  # its row was read again, the pick stays
    assert watched.heard("queue", ahead.pk)
    browser.screenshot("live-list-queue")
    watched.assert_one_socket_and_no_violation()
    terminate_run(Run.objects.get(pk=holder.pk), actor=alice)
    for run in (holder, ahead, behind):
        wait_for(run.pk, {"completed", "terminated"}, removed=True)
