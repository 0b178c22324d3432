"""The web console in a real browser (Playwright driving Debian's Chromium) against
a live Daphne, a live Celery worker and the real Docker engine (SPEC §5)."""

import re

import pytest
import yaml

from runs.models import Run
from tests.conftest import BUSYBOX, SCREENSHOTS, sign_in, wait_for
from tests.test_engine import launch

FINAL = {"completed", "failed", "terminated"}


def expect_text(page, selector: str, pattern: str, timeout=30000):
    page.wait_for_function(
        "([sel, pat]) => { const el = document.querySelector(sel); return el && new RegExp(pat).test(el.textContent); }",
        arg=[selector, pattern], timeout=timeout,
    )


def test_a_new_install_greets_with_an_empty_state(browser):
    browser.goto("/")
    assert browser.page.get_by_role("heading", name="No runs yet").is_visible()
    browser.screenshot("runs-empty")


def test_a_run_created_from_yaml_goes_to_completed_on_the_list_without_reload(browser, docker_engine):
    page = browser.page
    browser.goto("/runs/new/")
    page.get_by_label("Run YAML").fill(yaml.safe_dump({
        "name": "from-the-browser", "tags": ["ui"], "image": BUSYBOX,
        "run": [{"command": "echo hello; sleep 4; echo bye"}],
    }))
    browser.screenshot("run-new")
    page.get_by_role("button", name="Create run").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run_id = int(page.url.rstrip("/").split("/")[-1])
    browser.goto("/")
    page.evaluate("window.__sameDocument = true")
    row = f"#run-{run_id} .badge"
    expect_text(page, row, "Pending|Initializing|Running")
    browser.screenshot("runs-list-running")
    expect_text(page, row, "^Completed$", timeout=60000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    browser.screenshot("runs-list")


def test_a_new_run_with_a_bad_spec_shows_the_errors_by_field(browser):
    page = browser.page
    browser.goto("/runs/new/")
    page.get_by_label("Run YAML").fill("name: x\nimage: 3\nrun:\n  - command: true\n    workdir: 5\nextra: 1\n")
    page.get_by_role("button", name="Create run").click()
    box = page.locator("#spec-errors")
    assert box.is_visible()
    text = box.inner_text()
    for expected in ("line 2 image expected an image name, or a mapping with url and credential_name", "line 5 run[0].workdir expected a string", "line 6 extra unknown key"):
        assert expected in text.replace("\n", " ")
    assert page.get_by_label("Run YAML").input_value().startswith("name: x")  # nothing lost
    assert Run.objects.count() == 0
    browser.screenshot("run-new-errors")


def test_a_running_run_is_terminated_from_its_page(browser, alice, docker_engine):
    run = launch(alice, "docker", "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.2; done", termination_grace="5s")
    wait_for(run.pk, "running")
    page = browser.page
    browser.goto(f"/runs/{run.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Terminate").click()
    expect_text(page, "#run-head .badge", "^Terminated$")
    browser.screenshot("run-terminating")
    run = wait_for(run.pk, "terminated", removed=True)
    assert page.get_by_role("button", name="Terminate").is_disabled()
    assert run.status_reason == "terminated by alice"


def test_terminate_asks_first(browser, alice, docker_engine):
    run = launch(alice, "docker", "sleep 60")
    wait_for(run.pk, "running")
    browser.goto(f"/runs/{run.pk}/")
    browser.page.once("dialog", lambda dialog: dialog.dismiss())
    browser.page.get_by_role("button", name="Terminate").click()
    browser.page.wait_for_timeout(500)
    assert Run.objects.get(pk=run.pk).status == "running"
    Run.objects.get(pk=run.pk)
    from runs.services import terminate_run

    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_finished_run_is_reproduced_from_its_page_as_is_and_with_changes(browser, alice, docker_engine):
    run = wait_for(launch(alice, "docker", "echo seed=$SEED", env={"SEED": "1"}).pk, "completed", removed=True)
    page = browser.page
    browser.goto(f"/runs/{run.pk}/")
    browser.screenshot("run-summary")
    page.get_by_role("link", name="Reproduce").click()
    browser.screenshot("run-reproduce")
    page.get_by_role("button", name="Reproduce as is").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    same = Run.objects.order_by("-pk").first()
    assert same.reproduced_from_id == run.pk and same.spec == run.spec
    browser.goto(f"/runs/{run.pk}/reproduce/")
    page.get_by_text("Reproduce with changes").click()
    page.get_by_label("Environment").fill("SEED=2")
    page.get_by_role("button", name="Reproduce with these changes").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    changed = wait_for(Run.objects.order_by("-pk").first().pk, "completed", removed=True)
    assert changed.changes["env"] == {"from": {"SEED": "1"}, "to": {"SEED": "2"}}
    expect_text(page, "body", "with changes")
    expect_text(page, "#summary-body .timeline", "Completed")  # the timeline followed the run live
    browser.screenshot("run-summary-reproduced")


def test_another_teams_run_is_a_clear_404(chromium, console_url, alice, charlie, engine):
    run = launch(alice, "local", "true")
    visitor = sign_in(chromium, console_url, charlie)
    try:
        for path in (f"/runs/{run.pk}/", f"/runs/{run.pk}/logs/", f"/runs/{run.pk}/files/", "/runs/999999/"):
            response = visitor.goto(path)
            assert response.status == 404, path
        visitor.screenshot("run-404")
        visitor.goto("/")
        assert visitor.page.locator(f"#run-{run.pk}").count() == 0
    finally:
        visitor.page.context.close()
    wait_for(run.pk, FINAL, removed=True)


@pytest.mark.parametrize("width", [390])
def test_pages_fit_a_phone(chromium, console_url, alice, engine, width):
    run = wait_for(launch(alice, "local", "echo small screen").pk, "completed", removed=True)
    phone = sign_in(chromium, console_url, alice, width=width, height=844)
    try:
        for name, path in (("runs-list", "/"), ("run-summary", f"/runs/{run.pk}/"), ("run-new", "/runs/new/")):
            phone.goto(path)
            overflow = phone.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
            phone.screenshot(f"{name}-{width}")
    finally:
        phone.page.context.close()


@pytest.mark.real_passwords
def test_the_login_page_and_keyboard_sign_in(chromium, console_url, alice, engine):
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(console_url + "/runs/new/")
        assert "/accounts/login/" in page.url  # signed out: every page leads here
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "login.png"))
        page.keyboard.press("Tab")  # skip link
        page.get_by_label("Username").focus()
        page.keyboard.type("alice")
        page.keyboard.press("Tab")
        page.keyboard.type("pw-alice")
        page.keyboard.press("Enter")
        page.wait_for_url(console_url + "/runs/new/")
    finally:
        context.close()
