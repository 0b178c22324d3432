"""The web terminal's websocket (SPEC §5): a shell inside a live run, on a real
container and on a local process, that survives a dropped connection, and is
refused to whoever may not have it."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from dashboard.asgi import application
from runs.services import terminate_run
from terminal import sessions
from tests.conftest import ENGINE_EXECUTORS, in_thread, use_executor, wait_for
from tests.test_engine import launch, log_texts
from tests.test_live import ORIGIN, session_cookie


@pytest.fixture(params=ENGINE_EXECUTORS)
def executor(request, engine):
    return use_executor(request)


class Conversation:
    """One websocket to a run's terminal, read until a text appears. The session
    cookie is made beforehand, in the test's thread: no query runs in the loop's."""

    def __init__(self, run_id: int, cookie: bytes, query: str = "mode=shell", origin=ORIGIN):
        headers = [origin, (b"cookie", cookie)]
        self.socket = WebsocketCommunicator(application, f"/ws/runs/{run_id}/terminal/?{query}", headers=headers)
        self.output = b""
        self.controls: list[dict] = []

    async def open(self):
        connected, code = await self.socket.connect(timeout=10)
        return connected, code

    async def next_message(self, timeout=20):
        message = await self.socket.receive_output(timeout)
        if message["type"] == "websocket.close":
            self.controls.append({"type": "closed", "code": message.get("code")})
            return self.controls[-1]
        if message.get("bytes") is not None:
            self.output += message["bytes"]
            return None
        self.controls.append(json.loads(message["text"]))
        return self.controls[-1]

    async def control(self, kind: str, timeout=20) -> dict:
        while True:
            message = await self.next_message(timeout)
            if message and message["type"] in (kind, "closed"):
                return message

    async def until(self, text: str, timeout=20):
        deadline = asyncio.get_running_loop().time() + timeout
        while text.encode() not in self.output:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"{text!r} never appeared; the terminal showed {self.output[-500:]!r}"
            await self.next_message(left)

    async def type(self, keys: str):
        await self.socket.send_to(bytes_data=keys.encode())


def running(user, executor: str, command: str = "echo ready; sleep 120"):
    run = launch(user, executor, command)
    return wait_for(run.pk, "running")


def test_a_shell_runs_commands_inside_the_run(alice, executor):
    alice_cookie = session_cookie(alice)
    run = running(alice, executor)

    async def talk():
        shell = Conversation(run.pk, alice_cookie)
        assert (await shell.open())[0]
        hello = await shell.control("session")
        assert hello["mode"] == "shell" and hello["writable"] is True and hello["resumed"] is False
        await shell.type("echo answer-$((6 * 7)) in-run-$RUNYARD_RUN_ID\n")
        await shell.until(f"answer-42 in-run-{run.pk}")
        await shell.socket.send_to(text_data=json.dumps({"type": "resize", "cols": 123, "rows": 33}))
        await shell.type("stty size\n")
        await shell.until("33 123")
        await shell.type("exit\n")
        assert (await shell.control("exit"))["type"] == "exit"
        return True

    assert in_thread(talk)
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_dropped_connection_resumes_the_same_shell(alice, bob, executor):
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    run = running(alice, executor)

    async def talk():
        first = Conversation(run.pk, alice_cookie)
        await first.open()
        session_id = (await first.control("session"))["id"]
        await first.type("export KEPT=still-here\n")
        await first.type("echo set-$KEPT\n")
        await first.until("set-still-here")
        await first.socket.disconnect()  # the connection drops

        again = Conversation(run.pk, alice_cookie, f"mode=shell&session={session_id}")
        await again.open()
        hello = await again.control("session")
        assert hello["id"] == session_id and hello["resumed"] is True
        await again.until("set-still-here")  # what it printed before is replayed
        await again.type("echo back-$KEPT\n")
        await again.until("back-still-here")

        # A teammate who learns the id gets a shell of their own, not alice's.
        other = Conversation(run.pk, bob_cookie, f"mode=shell&session={session_id}")
        await other.open()
        theirs = await other.control("session")
        assert theirs["id"] != session_id and theirs["resumed"] is False
        await other.type("echo bob-sees-[$KEPT]\n")
        await other.until("bob-sees-[]")
        for conversation in (again, other):
            await conversation.socket.send_to(text_data=json.dumps({"type": "close"}))
            assert (await conversation.control("exit"))["type"] == "exit"
        return True

    assert in_thread(talk)
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_session_nobody_comes_back_to_is_closed(alice, engine):
    alice_cookie = session_cookie(alice)
    run = running(alice, "local")

    async def talk():
        shell = Conversation(run.pk, alice_cookie)
        await shell.open()
        session_id = (await shell.control("session"))["id"]
        await shell.socket.disconnect()
        return session_id

    session_id = in_thread(talk)
    assert sessions.find_session(session_id, run_id=run.pk, user_id=alice.pk) is not None
    with override_settings(RUNYARD_TERMINAL_KEEP_SECONDS=0):
        assert sessions.reap(now=float("inf")) >= 1
    assert sessions.find_session(session_id, run_id=run.pk, user_id=alice.pk) is None
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_attach_is_the_main_process(alice, bob, executor):
    """Its output live, typed lines to its stdin, Ctrl-C interrupts it; a detach is no end of input."""
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    run = running(alice, executor, 'read first; echo "got $first"; read second; echo "then $second"; sleep 300')

    async def talk():
        attached = Conversation(run.pk, alice_cookie, "mode=attach")
        await attached.open()
        hello = await attached.control("session")
        assert (hello.get("mode"), hello.get("writable")) == ("attach", True), attached.controls
        await attached.type("helo\x7flo there\r")  # a typo erased, then Enter as xterm sends it
        await attached.until("got hello there")
        await attached.socket.disconnect()  # the run's stdin stays open: its next read waits

        # Two attached at once: both see what the run prints, each one's typing goes to it.
        again = Conversation(run.pk, alice_cookie, "mode=attach")
        other = Conversation(run.pk, bob_cookie, "mode=attach")
        for conversation in (again, other):
            await conversation.open()
            await conversation.control("session")
        await other.type("from bob\r")
        await other.until("then from bob")
        await again.until("then from bob")
        assert again.output.count(b"from bob") == 1  # the echo is for the one typing
        await again.type("\x03")  # Ctrl-C
        await again.until("^C")
        return (await again.control("exit", timeout=60))["type"], (await other.control("exit", timeout=60))["type"]

    assert in_thread(talk) == ("exit", "exit")
    run = wait_for(run.pk, "failed", removed=True)
    assert run.exit_code == 130  # the command got SIGINT itself (128 + 2)
    log = "".join(log_texts(run))
    assert "got hello there" in log and "then from bob" in log
    assert "helo" not in log  # what is typed is not stored, only what the run prints


def test_who_may_not_have_a_terminal_is_told_so(alice, viola, charlie, engine):
    alice_cookie, viola_cookie, charlie_cookie = (session_cookie(u) for u in (alice, viola, charlie))
    run = running(alice, "local")
    finished = wait_for(launch(alice, "local", "true").pk, "completed", removed=True)

    async def talk():
        results = {}
        viewer = Conversation(run.pk, viola_cookie)
        await viewer.open()
        results["viewer"] = (await viewer.control("error"))["detail"], (await viewer.control("closed"))["code"]
        viewer_attach = Conversation(run.pk, viola_cookie, "mode=attach")
        await viewer_attach.open()
        results["viewer attach"] = (await viewer_attach.control("closed"))["code"]
        outsider = Conversation(run.pk, charlie_cookie)
        results["outsider"] = await outsider.open()
        foreign = Conversation(run.pk, alice_cookie, origin=(b"origin", b"https://evil.example"))
        results["foreign"] = (await foreign.open())[0]
        ended = Conversation(finished.pk, alice_cookie)
        await ended.open()
        results["ended"] = (await ended.control("error"))["detail"], (await ended.control("closed"))["code"]
        wrong_mode = Conversation(run.pk, alice_cookie, "mode=root")
        await wrong_mode.open()
        results["mode"] = (await wrong_mode.control("error"))["detail"]
        return results

    results = in_thread(talk)
    assert results["viewer"] == ("viewers cannot open a terminal in a run", 4403)
    assert results["viewer attach"] == 4403  # nor attach to the main process, keys and Ctrl-C
    assert results["outsider"] == (False, 4404)
    assert results["foreign"] is False
    assert results["ended"] == ("the run is completed: a terminal needs a running or idle run", 4409)
    assert results["mode"] == "mode must be one of shell, attach"
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_the_terminal_ends_with_its_run(alice, executor):
    alice_cookie = session_cookie(alice)
    run = running(alice, executor)

    async def talk():
        from channels.db import database_sync_to_async

        shell = Conversation(run.pk, alice_cookie)
        await shell.open()
        await shell.control("session")
        await shell.type("echo before-the-end\n")
        await shell.until("before-the-end")
        await database_sync_to_async(terminate_run)(run, actor=alice)
        return (await shell.control("exit", timeout=40))["type"]

    assert in_thread(talk) == "exit"
    wait_for(run.pk, "terminated", removed=True)


def test_attached_typing_is_edited_as_a_terminal_would():
    from runs.executors.base import AttachedInput

    keys = AttachedInput()
    assert keys.feed("héé\x7f\x1b[Dllo".encode()) == (b"", "héé".encode() + b"\b \b" + b"llo", False)  # an arrow key is dropped
    assert keys.feed(b"\r") == ("héllo\n".encode(), b"\r\n", False)
    assert keys.feed(b"one\rtwo\x15three\r") == (b"one\nthree\n", b"one\r\ntwo" + b"\b \b" * 3 + b"three\r\n", False)
    assert keys.feed(b"half\x03ignored") == (b"", b"half^C\r\n", True)  # the unfinished line is dropped
    assert keys.feed(b"\x04\r") == (b"\n", b"\r\n", False)  # Ctrl-D is no end of input
