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
from tests.conftest import ENGINE_EXECUTORS, in_thread, sign_in, use_executor, wait_for, wait_until
from tests.test_admin import make_run
from tests.test_live import session_cookie
from tests.test_terminal import Conversation, running
from tests.websocket_client import WebSocket


@pytest.fixture(params=ENGINE_EXECUTORS)
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


# -- a console killed outright ---------------------------------------------------------


def test_the_sessions_of_a_killed_console_end_on_record(alice, tina, engine, docker_engine, worker_env, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from django.utils import timezone

    from terminal.models import ConsoleInstance
    from tests.conftest import ROOT

    run = running(alice, "docker")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    console = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
        cwd=ROOT, env=worker_env, stdout=open(tmp_path / "daphne.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _answers(urllib.request, port), 60, "the console")
        shell = WebSocket(port, f"/ws/runs/{run.pk}/terminal/?mode=shell", session_cookie(alice))
        assert shell.status == 101, shell.headers
        hello = shell.next_json()
        assert hello["type"] == "session"
        record = TerminalSessionRecord.objects.get(session_key=hello["id"])
        assert record.ended_at is None and record.console.split(":")[1] == str(console.pid)
        os.killpg(console.pid, signal.SIGKILL)  # no atexit, nothing ends on record
        console.wait()
        killed_at = timezone.now()
        shell.close()
    finally:
        if console.poll() is None:
            os.killpg(console.pid, signal.SIGKILL)
            console.wait()
    # The reconciler (every 2 s) ends it once the console has been silent 12 s.
    record = ended_record(session_key=hello["id"])
    assert record.ended_how == Ending.CONSOLE_LOST
    assert record.started_at <= record.ended_at <= killed_at  # its console was last heard from by then
    assert record.console in record.note
    assert not ConsoleInstance.objects.filter(key=record.console).exists()
    # The team's admins read it so.
    assert "the console was lost" in signed_in(tina).get(f"/runs/{run.pk}/terminal/sessions/").content.decode()
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def _answers(urllib_request, port: int) -> bool:
    try:
        urllib_request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
        return True
    except OSError:
        return False



@override_settings(RUNYARD_CONSOLE_LOST_SECONDS=60)
def test_only_the_sessions_of_a_silent_console_end(alice, defaults, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from terminal import consoles
    from terminal.models import ConsoleInstance

    monkeypatch.setattr(audit, "_open_records", set())  # this process vouches for none of them after the test
    run = make_run(alice, "vision-run")
    now = timezone.now()
    ConsoleInstance.objects.create(key="gone:1:aa", started_at=now - timedelta(hours=1), seen_at=now - timedelta(seconds=90))
    ConsoleInstance.objects.create(key="quiet:2:bb", started_at=now - timedelta(hours=1), seen_at=now - timedelta(seconds=30))

    def opened(key: str, console: str, started):
        audit.record_opened(key, run, alice, "shell")  # this process's console, beating now
        TerminalSessionRecord.objects.filter(session_key=key).update(console=console, started_at=started)
        return key

    opened("before-its-last-beat", "gone:1:aa", now - timedelta(seconds=300))
    opened("after-its-last-beat", "gone:1:aa", now - timedelta(seconds=80))
    opened("on-a-quiet-console", "quiet:2:bb", now - timedelta(seconds=300))
    opened("from-before-consoles", "", now - timedelta(seconds=300))
    alive = audit.record_opened("on-this-console", run, alice, "attach")

    assert consoles.end_sessions_of_lost_consoles() == 3
    before, after, legacy = (TerminalSessionRecord.objects.get(session_key=k)
                             for k in ("before-its-last-beat", "after-its-last-beat", "from-before-consoles"))
    assert before.ended_how == after.ended_how == legacy.ended_how == Ending.CONSOLE_LOST
    assert before.ended_at == now - timedelta(seconds=90)  # the last time its console was heard from
    assert after.ended_at == after.started_at  # opened after that beat: it ended as it began, at the latest
    assert "recorded before consoles" in legacy.note
    for key in ("on-a-quiet-console", "on-this-console"):
        assert TerminalSessionRecord.objects.get(session_key=key).ended_at is None, key
    assert TerminalSessionRecord.objects.get(pk=alive).console == consoles.this_console()
    assert set(ConsoleInstance.objects.values_list("key", flat=True)) == {"quiet:2:bb", consoles.this_console()}
