"""Websockets (SPEC §5): live log lines and status changes, checked against the
session user and the Origin, over the real channel layer (Redis) and worker."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from dashboard.asgi import application
from tests.conftest import in_thread, wait_for
from tests.test_access import quiet_run
from tests.test_engine import launch

ORIGIN = (b"origin", b"http://127.0.0.1")


def session_cookie(user) -> bytes:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"sessionid={session.session_key}".encode()


async def collect(path: str, headers, until_end=True, limit=200):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=10)
    messages = []
    if connected:
        try:
            while len(messages) < limit:
                message = await communicator.receive_json_from(timeout=30)
                messages.append(message)
                if message["type"] == "end" or not until_end:
                    break
        finally:
            await communicator.disconnect()
    return connected, code, messages


def lines_of(messages) -> list[int]:
    return [line["n"] for m in messages if m["type"] == "lines" for line in m["lines"]]


def test_the_log_socket_streams_every_line_then_the_end(alice, engine):
    run = launch(alice, "local", "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo line-$i; sleep 0.05; done")
    connected, _, messages = in_thread(collect, f"/ws/runs/{run.pk}/logs/?after=0", [ORIGIN, (b"cookie", session_cookie(alice))])
    assert connected
    assert lines_of(messages) == list(range(1, 31))
    assert messages[-1] == {"type": "end", "status": "completed"}
    statuses = [m["to"] for m in messages if m["type"] == "status"]
    assert statuses[-1] == "completed"


def test_a_reconnect_resumes_after_the_last_line_seen(alice, engine):
    run = wait_for(launch(alice, "local", "seq 1 50").pk, "completed", removed=True)
    _, _, messages = in_thread(collect, f"/ws/runs/{run.pk}/logs/?after=37", [ORIGIN, (b"cookie", session_cookie(alice))])
    assert lines_of(messages) == list(range(38, 51))


def test_an_outsider_or_a_foreign_origin_is_refused(alice, charlie, engine):
    run = launch(alice, "local", "echo secret-ish")
    outsider = in_thread(collect, f"/ws/runs/{run.pk}/logs/", [ORIGIN, (b"cookie", session_cookie(charlie))])
    assert outsider[0] is False and outsider[1] == 4404
    foreign = in_thread(collect, f"/ws/runs/{run.pk}/logs/", [(b"origin", b"https://evil.example"), (b"cookie", session_cookie(alice))])
    assert foreign[0] is False
    anonymous = in_thread(collect, "/ws/runs/", [ORIGIN])
    assert anonymous[0] is False and anonymous[1] == 4401
    wait_for(run.pk, "completed", removed=True)


def test_the_runs_socket_tells_the_team_about_status_changes(alice, bob, charlie, engine):
    bob_cookie, charlie_cookie = session_cookie(bob), session_cookie(charlie)

    async def watch_and_launch():
        teammate = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", bob_cookie)])
        outsider = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", charlie_cookie)])
        assert (await teammate.connect())[0] and (await outsider.connect())[0]
        from channels.db import database_sync_to_async

        run = await database_sync_to_async(launch)(alice, "local", "true")
        seen = []
        while "completed" not in seen:
            message = await teammate.receive_json_from(timeout=30)
            assert message["run"] == run.pk
            seen.append(message["to"])
        assert await outsider.receive_nothing(timeout=1)
        await teammate.disconnect()
        await outsider.disconnect()
        return seen

    assert in_thread(watch_and_launch) == ["pending", "initializing", "running", "stopping", "completed"]  # a new run is told too


def test_the_runs_socket_tells_the_team_about_progress(alice, bob, charlie, engine):
    bob_cookie, charlie_cookie = session_cookie(bob), session_cookie(charlie)

    async def watch_and_launch():
        teammate = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", bob_cookie)])
        outsider = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", charlie_cookie)])
        assert (await teammate.connect())[0] and (await outsider.connect())[0]
        from channels.db import database_sync_to_async

        run = await database_sync_to_async(launch)(
            alice, "local", "echo '#runyard progress=0.25'; sleep 1; echo '#runyard progress=0.5'; sleep 1")
        progress = []
        while len(progress) < 2:
            message = await teammate.receive_json_from(timeout=30)
            assert message["run"] == run.pk
            if message["type"] == "progress":
                progress.append((message["progress"], message["eta_seconds"] is not None))
        assert await outsider.receive_nothing(timeout=1)
        await teammate.disconnect()
        await outsider.disconnect()
        return run.pk, progress

    run_id, progress = in_thread(watch_and_launch)
    # One sample tells no rate; two a second apart do.
    assert progress == [(0.25, False), (0.5, True)]
    wait_for(run_id, "completed", removed=True)


def test_an_idle_runs_socket_stays_open_and_hears_the_next_change(alice, engine):
    cookie = session_cookie(alice)

    async def idle_then_launch():
        watcher = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", cookie)])
        assert (await watcher.connect())[0]
        # Longer than the channel layer's blocking read for the next message (5 s).
        assert await watcher.receive_nothing(timeout=7)
        from channels.db import database_sync_to_async

        run = await database_sync_to_async(launch)(alice, "local", "true")
        message = await watcher.receive_json_from(timeout=30)
        await watcher.disconnect()
        return run.pk, message

    run_id, message = in_thread(idle_then_launch)
    assert (message["type"], message["run"]) == ("status", run_id)
    wait_for(run_id, "completed", removed=True)


def test_a_consumer_cancelled_while_it_waits_on_redis_always_ends():
    """A websocket's consumer waits for its next message in the channel layer's
    receive; when the socket closes, that wait is cancelled and must end, or the
    consumer (and its Redis connection) lives on for good, and a test's event loop
    never closes. The cancel is sent at 60 moments across the first 18 ms, while the
    receive connects to Redis, sends its commands and blocks."""
    if "channels_redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        pytest.skip("the embedded default's channel layer lives in memory")
    layer = channel_layers.make_backend("default")  # its own pools: a hang stays here

    async def cancel_after(delay: float) -> bool:
        receiving = asyncio.ensure_future(layer.receive(await layer.new_channel()))
        await asyncio.sleep(delay)
        receiving.cancel()
        done, _ = await asyncio.wait([receiving], timeout=10)
        return bool(done)

    def each_moment():
        hung = []
        for i in range(60):
            loop = asyncio.new_event_loop()
            try:
                if not loop.run_until_complete(cancel_after(i * 0.0003)):
                    hung.append(round(i * 0.3, 1))
            finally:
                loop.close()  # a hung receive is left pending, not waited for
        return hung

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(each_moment).result() == [], "a cancelled receive went on waiting (ms after it began)"


def test_a_closed_log_sockets_reader_stops_even_as_a_line_wakes_it(transactional_db, alice):
    """A log socket's pump waits for the next flush's wake (or 2 s) and is cancelled
    when the socket closes. A wake that comes in the same moment as the close must not
    keep it going: it would read the database every 2 s for as long as the run lives."""
    run = quiet_run(alice, "awake")  # pending and queued nowhere: its log stays as it is
    cookie = session_cookie(alice)

    async def close_as_woken():
        socket = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/logs/?after=0", headers=[ORIGIN, (b"cookie", cookie)])
        assert (await socket.connect(timeout=10))[0]
        await asyncio.sleep(0.5)  # it has read what there is, and waits
        (pump,) = [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "RunLogsConsumer._pump"]
        consumer = pump.get_coro().cr_frame.f_locals["self"]
        consumer.wake.set()  # a flush's wake and the close's cancel, in one step of the loop
        pump.cancel()
        await asyncio.sleep(0.3)
        going_on = not pump.done()
        await socket.disconnect()
        return going_on

    assert in_thread(close_as_woken) is False
