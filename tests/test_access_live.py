"""Who reaches what on the live paths (runs.access): the websockets and the browser,
persona by persona, with a real worker (ISSUE 7 §1, SPEC §5). The personas and their
world are tests/test_access.py's.

A module of their own: these tests are transactional, and test_access.py's database
tests share a world made once in a transaction that lasts as long as that module
(world_once). Run in that module, on their own, they met its rows.
"""

import json

import pytest
from channels.testing import WebsocketCommunicator

from dashboard.asgi import application
from runs.lifecycle import transition
from runs.models import Membership, Team
from tests.conftest import _user, in_thread, wait_for
from tests.test_access import CHANGE, PERSONAS, READ, call, expected, make_world, quiet_run
from tests.test_live import ORIGIN, session_cookie


async def connect(path: str, cookie: bytes | None):
    headers = [ORIGIN] + ([(b"cookie", cookie)] if cookie else [])
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await socket.connect(timeout=10)
    return socket, connected, code


async def first_control(socket) -> tuple:
    """The first text frame (if any) and the close code that follows."""
    detail = None
    while True:
        message = await socket.receive_output(10)
        if message["type"] == "websocket.close":
            return detail, message.get("code")
        if message.get("text"):
            detail = detail or json.loads(message["text"]).get("detail")


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_websockets_give_each_persona_what_its_role_allows(transactional_db, defaults, persona):
    # The run must stay pending (no shell yet) even where an earlier test left a worker running.
    world = make_world(vision_cap=0)
    cookie = session_cookie(world.users[persona]) if persona != "dora" else _inactive_cookie(world.users["dora"])
    run_id = world.run.pk

    async def talk():
        results = {}
        logs, connected, code = await connect(f"/ws/runs/{run_id}/logs/?after=0", cookie)
        if connected:
            results["logs"] = [line["text"] for line in (await logs.receive_json_from(10))["lines"]]
            await logs.disconnect()
        else:
            results["logs"] = code
        runs, connected, code = await connect("/ws/runs/", cookie)
        results["runs"] = connected or code
        if connected:
            await runs.disconnect()
        terminal, connected, code = await connect(f"/ws/runs/{run_id}/terminal/?mode=shell", cookie)
        results["terminal"] = (await first_control(terminal)) if connected else code
        return results

    results = in_thread(talk)
    outcome = expected(persona, READ)
    if outcome == "allowed":
        assert results["logs"] == ["hello from vision", "bye"]
        assert results["runs"] is True
    elif outcome == "anonymous":
        assert results == {"logs": 4401, "runs": 4401, "terminal": 4401}
        return
    else:
        assert results["logs"] == 4404
        assert results["runs"] == (True if persona in {"charlie", "otto"} else 4403)  # their own team's list, or none
    terminal = expected(persona, CHANGE)
    if terminal == "allowed":  # let in: the run is pending, so no shell yet
        assert results["terminal"] == ("the run is pending: a terminal needs a running or idle run", 4409)
    elif terminal == "refused":
        assert results["terminal"] == ("viewers cannot open a terminal in a run", 4403)
    else:
        assert results["terminal"] == 4404
    assert Membership.objects.filter(user=world.users[persona]).count() == (0 if persona in {"remy", "root"} else 1)


def _inactive_cookie(user) -> bytes:
    """A session made while dora was active: deactivating her must end what it opens."""
    user.is_active = True
    user.save()
    cookie = session_cookie(user)
    user.is_active = False
    user.save()
    return cookie


def test_a_member_removed_mid_stream_stops_receiving(alice, bob, engine):
    """bob follows the list and the log of alice's run; removed from the team, both
    sockets close and he sees no more lines, while alice's go on to the end."""
    from channels.db import database_sync_to_async

    from tests.test_engine import launch

    bob_cookie, alice_cookie = session_cookie(bob), session_cookie(alice)
    run = launch(alice, "local", "i=0; while [ $i -lt 150 ]; do i=$((i+1)); echo line-$i; sleep 0.05; done")

    async def watch():
        bobs_log, connected, _ = await connect(f"/ws/runs/{run.pk}/logs/?after=0", bob_cookie)
        bobs_list, listed, _ = await connect("/ws/runs/", bob_cookie)
        alices_log, _, _ = await connect(f"/ws/runs/{run.pk}/logs/?after=0", alice_cookie)
        assert connected and listed
        seen_by_bob: list[int] = []
        while len(seen_by_bob) < 5:
            message = await bobs_log.receive_json_from(30)
            seen_by_bob += [line["n"] for line in message.get("lines", [])]
        await database_sync_to_async(Membership.objects.filter(user=bob).delete)()
        removed_at = seen_by_bob[-1]
        closes = {}
        for name, socket in (("log", bobs_log), ("list", bobs_list)):
            while True:
                message = await socket.receive_output(30)
                if message["type"] == "websocket.close":
                    closes[name] = message.get("code")
                    break
                if name == "log":
                    seen_by_bob += [line["n"] for line in json.loads(message["text"]).get("lines", [])]
        seen_by_alice: list[int] = []
        while True:
            message = await alices_log.receive_json_from(30)
            seen_by_alice += [line["n"] for line in message.get("lines", [])]
            if message["type"] == "end":
                break
        await alices_log.disconnect()
        return closes, removed_at, seen_by_bob, seen_by_alice

    closes, removed_at, seen_by_bob, seen_by_alice = in_thread(watch)
    assert closes == {"log": 4404, "list": 4403}
    assert seen_by_alice == list(range(1, 151))
    assert seen_by_bob == list(range(1, len(seen_by_bob) + 1)) and removed_at <= len(seen_by_bob) < 150
    assert not Membership.objects.filter(user=bob).exists()
    wait_for(run.pk, "completed", removed=True)


def test_a_terminal_closes_when_its_user_loses_access(alice, bob, engine):
    from channels.db import database_sync_to_async

    from tests.test_engine import launch
    from tests.test_terminal import Conversation

    bob_cookie = session_cookie(bob)
    run = wait_for(launch(alice, "local", "echo ready; sleep 120").pk, "running")

    async def talk():
        shell = Conversation(run.pk, bob_cookie)
        assert (await shell.open())[0]
        await shell.control("session")
        await shell.type("echo still-$((40 + 2))\n")
        await shell.until("still-42")
        await database_sync_to_async(Membership.objects.filter(user=bob).update)(role="viewer")
        error = await shell.control("error")
        closed = await shell.control("closed")
        return error["detail"], closed["code"]

    assert in_thread(talk) == ("you no longer have access to a terminal in this run", 4403)
    from runs.services import terminate_run

    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_the_list_socket_drops_a_team_the_user_leaves_and_keeps_the_other(transactional_db, defaults):
    """bob is in vision and speech; removed from vision, he stops hearing of its runs
    (after at most one recheck) and still hears of speech's, on the same socket."""
    from channels.db import database_sync_to_async

    alice, bob, charlie = _user("alice", "vision"), _user("bob", "vision"), _user("charlie", "speech")
    Membership.objects.create(user=bob, team=Team.objects.get(name="speech"), role="member")
    vision = [quiet_run(alice, f"v{i}").pk for i in range(12)]
    speech = [quiet_run(charlie, f"s{i}", "speech").pk for i in range(12)]
    bob_cookie = session_cookie(bob)

    async def watch():
        import asyncio

        socket, connected, _ = await connect("/ws/runs/", bob_cookie)
        assert connected
        end = database_sync_to_async(lambda pk: transition(pk, "terminated", reason="test"))
        await end(vision[0])
        assert (await socket.receive_json_from(10))["run"] == vision[0]
        await database_sync_to_async(Membership.objects.filter(user=bob, team__name="vision").delete)()
        heard = []
        for v, s in zip(vision[1:], speech[1:]):
            await end(v)
            await end(s)
            while not heard or heard[-1] != s:
                heard.append((await socket.receive_json_from(10))["run"])
            await asyncio.sleep(0.3)
        await socket.disconnect()
        return heard

    heard = in_thread(watch)
    assert [run for run in heard if run in speech] == speech[1:]
    vision_heard = [run for run in heard if run in vision]
    assert vision_heard == vision[1 : 1 + len(vision_heard)]  # a few in the recheck window at most, then none
    assert len(vision_heard) < len(vision) - 1


def test_a_user_manages_their_tokens_in_the_browser(browser, alice):
    page = browser.page
    browser.goto("/")
    page.get_by_role("link", name="Tokens").click()
    page.wait_for_url("**/account/tokens/")
    page.get_by_label("Name").fill("notebook")
    page.get_by_label("Expires").select_option("7")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator(".token-secret").inner_text()
    browser.screenshot("account-tokens-new")
    assert call(type("Holder", (), {"token": secret}), "GET", "/runs").status_code == 200
    row = page.locator("#tokens tr", has_text="notebook")
    assert row.is_visible() and "never" in row.inner_text()  # not used yet when the page was drawn
    page.get_by_role("button", name="Revoke notebook").click()
    page.wait_for_url("**/account/tokens/")
    assert page.get_by_text("Token revoked").is_visible()
    assert page.locator("#tokens tr", has_text="notebook").count() == 0
    assert call(type("Holder", (), {"token": secret}), "GET", "/runs").status_code == 401
    browser.screenshot("account-tokens")
