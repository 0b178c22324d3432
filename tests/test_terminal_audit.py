"""Every web terminal session is on record and visible to team admins (SPEC §5):
user, run, mode, start, end, how it ended, and a shell's exit code; a dropped and
resumed shell is one session; a refusal at the cap is on record too. Team admins see
their teams' sessions (a page, the admin); members, viewers and other teams do not."""

import json

import pytest
from django.test import Client, override_settings

from runs.services import terminate_run
from terminal import audit
from terminal.models import Ending, TerminalSessionRecord
from tests.conftest import EXECUTORS, in_thread, sign_in, use_executor, wait_for, wait_until
from tests.test_admin import make_run
from tests.test_live import session_cookie
from tests.test_terminal import Conversation, running


@pytest.fixture(params=EXECUTORS)
def executor(request, engine):
    return use_executor(request)


def ended_record(**lookup) -> TerminalSessionRecord:
    """The one record of these sessions, once its end is on record (the reader writes it)."""
    wait_until(lambda: TerminalSessionRecord.objects.filter(ended_at__isnull=False, **lookup).exists(), 30,
               f"an ended record of {lookup}")
    return TerminalSessionRecord.objects.get(**lookup)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_shell_is_on_record_with_how_it_ended_and_its_exit_code(alice, executor):
    alice_cookie = session_cookie(alice)
    run = running(alice, executor)

    async def talk():
        exited = Conversation(run.pk, alice_cookie)
        await exited.open()
        first = (await exited.control("session"))["id"]
        await exited.type("exit 3\n")
        await exited.control("exit")
        closed = Conversation(run.pk, alice_cookie)
        await closed.open()
        second = (await closed.control("session"))["id"]
        await closed.type("echo still-here\n")
        await closed.until("still-here")
        await closed.socket.send_to(text_data=json.dumps({"type": "close"}))
        await closed.control("exit")
        return first, second

    first, second = in_thread(talk)
    record = ended_record(session_key=first)
    assert (record.user, record.username, record.run_id, record.team_id, record.mode) == (alice, "alice", run.pk, run.team_id, "shell")
    assert record.started_at <= record.ended_at
    assert (record.ended_how, record.exit_code, record.resumes) == (Ending.EXITED, 3, 0)
    record = ended_record(session_key=second)
    assert record.ended_how == Ending.CLOSED
    assert record.exit_code == 137  # the console ends a shell it closes with SIGKILL (128 + 9)
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_dropped_and_resumed_shell_is_one_session(alice, executor):
    alice_cookie = session_cookie(alice)
    run = running(alice, executor)

    async def talk():
        first = Conversation(run.pk, alice_cookie)
        await first.open()
        session_id = (await first.control("session"))["id"]
        await first.socket.disconnect()  # the connection drops
        again = Conversation(run.pk, alice_cookie, f"mode=shell&session={session_id}")
        await again.open()
        assert (await again.control("session"))["resumed"] is True
        from channels.db import database_sync_to_async

        # The run ends under it: so does the shell, and its record says so.
        await database_sync_to_async(terminate_run)(run, actor=alice)
        await again.control("exit", timeout=40)
        return session_id

    session_id = in_thread(talk)
    record = ended_record(run=run)  # exactly one
    assert (record.session_key, record.resumes, record.ended_how) == (session_id, 1, Ending.RUN_ENDED)
    wait_for(run.pk, "terminated", removed=True)


def test_an_attach_and_a_refusal_at_the_cap_are_on_record(alice, engine):
    alice_cookie = session_cookie(alice)
    run = running(alice, "local")

    async def talk():
        attached = Conversation(run.pk, alice_cookie, "mode=attach")
        await attached.open()
        await attached.control("session")
        refused = Conversation(run.pk, alice_cookie)
        await refused.open()
        error = await refused.control("error")
        closed = await refused.control("closed")
        await attached.socket.send_to(text_data=json.dumps({"type": "close"}))
        await attached.control("exit")
        return error["detail"], closed["code"]

    with override_settings(RUNYARD_TERMINAL_MAX_SESSIONS=1):
        detail, code = in_thread(talk)
    assert code == 4429
    refusal = TerminalSessionRecord.objects.get(run=run, ended_how=Ending.REFUSED)
    assert (refusal.username, refusal.mode, refusal.note) == ("alice", "shell", detail)
    assert refusal.started_at == refusal.ended_at and refusal.session_key == ""
    attach = ended_record(run=run, mode="attach")
    assert (attach.ended_how, attach.exit_code) == (Ending.CLOSED, None)
    assert "the run's" in attach.note  # says where the main process's exit code is
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_only_the_teams_admins_see_the_sessions(alice, tina, bob, viola, charlie, defaults):
    ours, theirs = make_run(alice, "vision-run"), make_run(charlie, "speech-run")
    audit.record_opened("ours-key", ours, bob, "shell")
    audit.record_opened("theirs-key", theirs, charlie, "attach")

    admin = signed_in(tina)
    for path in ("/teams/vision/terminals/", f"/runs/{ours.pk}/terminal/sessions/"):
        page = admin.get(path)
        assert page.status_code == 200, path
        text = page.content.decode()
        assert "bob" in text and "speech-run" not in text and "charlie" not in text
    assert f"/runs/{ours.pk}/terminal/sessions/" in admin.get(f"/runs/{ours.pk}/terminal/").content.decode()
    assert admin.get("/teams/speech/terminals/").status_code == 404  # another team: as if missing
    assert admin.get(f"/runs/{theirs.pk}/terminal/sessions/").status_code == 404
    assert admin.get("/teams/vision/terminals/?before=x").status_code == 400

    listed = admin.get("/admin/terminal/terminalsessionrecord/").content.decode()
    assert "bob" in listed and "charlie" not in listed
    theirs_record = TerminalSessionRecord.objects.get(session_key="theirs-key")
    assert admin.get(f"/admin/terminal/terminalsessionrecord/{theirs_record.pk}/change/").status_code == 302
    ours_record = TerminalSessionRecord.objects.get(session_key="ours-key")
    assert admin.get(f"/admin/terminal/terminalsessionrecord/{ours_record.pk}/change/").status_code == 200
    assert admin.post(f"/admin/terminal/terminalsessionrecord/{ours_record.pk}/delete/").status_code == 403

    # Members and viewers of the team: told they may not; another team: nothing there.
    for user in (alice, viola):
        client = signed_in(user)
        assert client.get("/teams/vision/terminals/").status_code == 403
        assert client.get(f"/runs/{ours.pk}/terminal/sessions/").status_code == 403
        assert f"/runs/{ours.pk}/terminal/sessions/" not in client.get(f"/runs/{ours.pk}/terminal/").content.decode()
    outsider = signed_in(charlie)
    assert outsider.get("/teams/vision/terminals/").status_code == 404
    assert outsider.get(f"/runs/{ours.pk}/terminal/sessions/").status_code == 404
    assert Client().get("/teams/vision/terminals/").status_code == 302  # signed out: to sign in


def test_a_team_admin_reads_the_sessions_in_the_browser(alice, tina, chromium, console_url, engine):
    alice_cookie = session_cookie(alice)
    run = running(alice, "local")

    async def talk():
        shell = Conversation(run.pk, alice_cookie)
        await shell.open()
        session_id = (await shell.control("session"))["id"]
        await shell.type("exit 7\n")
        await shell.control("exit")
        return session_id

    ended_record(session_key=in_thread(talk))
    browser = sign_in(chromium, console_url, tina)
    try:
        browser.goto(f"/runs/{run.pk}/terminal/")
        browser.page.get_by_role("link", name="Terminal sessions of this run").click()
        row = browser.page.locator("#terminal-sessions tbody tr").first
        assert "alice" in row.inner_text() and "the shell exited" in row.inner_text()
        assert row.locator("td").nth(6).inner_text() == "7"  # the exit code column
        browser.screenshot("terminal-sessions")
    finally:
        browser.page.context.close()
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)
