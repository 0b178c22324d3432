"""The Terminal tab in a real browser (Playwright driving Debian's Chromium): xterm.js
talking to a shell inside a real container, through a dropped connection."""

from runs.services import terminate_run
from tests.conftest import sign_in, wait_for
from tests.test_engine import launch
from tests.test_pages import expect_text

SCREEN_TEXT = """() => {
  const buffer = window.__runyardTerminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


def wait_on_screen(page, text: str, timeout=20000):
    page.wait_for_function(f"(text) => ({SCREEN_TEXT})().includes(text)", arg=text, timeout=timeout)


def test_a_shell_in_the_browser_survives_a_dropped_connection(browser, alice, docker_engine):
    run = launch(alice, "docker", "echo up; sleep 300")
    wait_for(run.pk, "running")
    page = browser.page
    browser.goto(f"/runs/{run.pk}/terminal/")
    page.get_by_role("button", name="Open").click()
    expect_text(page, "#terminal-state", "Connected: a shell")
    page.locator("#terminal-screen").click()
    page.keyboard.type("export KEPT=kept-$((40 + 2)); echo typed-$KEPT\n")
    wait_on_screen(page, "typed-kept-42")
    browser.screenshot("run-terminal")
    # The connection drops (a proxy restart, a laptop lid): the page comes back to the same shell.
    page.evaluate("window.__droppedSocket = window.__runyardSocket; window.__droppedSocket.close()")
    # Until the page has made a new socket, the state still reads "Connected" from before
    # the drop, and keys typed then go nowhere.
    page.wait_for_function("() => window.__runyardSocket !== window.__droppedSocket")
    expect_text(page, "#terminal-state", "Connected: a shell")
    page.locator("#terminal-screen").click()
    page.keyboard.type("echo again-$KEPT\n")
    wait_on_screen(page, "again-kept-42")
    # Ending the session says so.
    page.get_by_role("button", name="End session").click()
    expect_text(page, "#terminal-state", "The session ended")
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_attach_in_the_browser_types_to_the_main_process_and_ctrl_c_interrupts_it(browser, alice, docker_engine):
    run = launch(alice, "docker", 'read name; echo "hello $name"; sleep 300')
    wait_for(run.pk, "running")
    page = browser.page
    browser.goto(f"/runs/{run.pk}/terminal/")
    assert page.get_by_text("Ctrl-C interrupts the run").first.is_visible()  # said before opening
    page.locator("#terminal-mode").select_option("attach")
    page.get_by_role("button", name="Open").click()
    expect_text(page, "#terminal-state", "Attached to the main process")
    page.locator("#terminal-screen").click()
    page.keyboard.type("world")
    wait_on_screen(page, "world")  # the line being typed is shown
    page.keyboard.press("Enter")
    wait_on_screen(page, "hello world")
    browser.screenshot("run-terminal-attach")
    page.keyboard.press("Control+c")
    expect_text(page, "#terminal-state", "The session ended")
    run = wait_for(run.pk, "failed", removed=True)
    assert run.exit_code == 130


def test_the_terminal_tab_explains_when_there_is_none(chromium, console_url, alice, viola, engine):
    finished = wait_for(launch(alice, "local", "true").pk, "completed", removed=True)
    running = wait_for(launch(alice, "local", "sleep 60").pk, "running")
    owner = sign_in(chromium, console_url, alice, width=390, height=844)
    viewer = sign_in(chromium, console_url, viola)
    try:
        owner.goto(f"/runs/{finished.pk}/terminal/")
        assert owner.page.get_by_text("There is nothing to open a terminal in").is_visible()
        owner.screenshot("run-terminal-finished-390")
        viewer.goto(f"/runs/{running.pk}/terminal/")
        assert viewer.page.get_by_text("Viewers cannot open a terminal.").is_visible()
        assert viewer.page.get_by_role("button", name="Open").count() == 0
    finally:
        owner.page.context.close()
        viewer.page.context.close()
    terminate_run(running, actor=alice)
    wait_for(running.pk, "terminated", removed=True)
