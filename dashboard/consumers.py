"""Live updates over websockets (SPEC §5).

/ws/runs/                     status changes of the runs of the user's teams
/ws/runs/{id}/logs/?after=N   the log after line N in batches, then live, then status changes

Both check the session user and (in asgi.py) the Origin at connect, and the
user's access (runs.access) again before every message they send, read again at
most once a second: a member removed from the team mid-stream stops receiving,
and the socket closes (4403 for the list with no team left, 4404 for a run's log,
as for a run that does not exist). Lines are always read from the database by
number, never forwarded from the collector, so a client that reconnects with
after=N gets exactly the lines after N: no gap, no double.
"""

import asyncio
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runs import access, logstore
from runs.live import remember_server_loop, run_group, team_group
from runs.lifecycle import FINAL
from runs.models import LogChunk, Run, RunEvent

BATCH_LINES = 2000
BATCH_BYTES = 1 << 20  # a batch of long lines stops near this size; the next one goes on from there
POLL_SECONDS = 2.0  # a missed notification costs at most this long


class DirectDispatch:
    """A consumer that reads the database only through database_sync_to_async (which
    closes stale connections in the thread it runs in, before and after) dispatches
    each message straight to its handler: Channels' own dispatch first calls
    close_old_connections through the thread that sync code shares, a hop that was
    most of a terminal keystroke's time here (0.8 ms of a 3 ms echo)."""

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)


class SignedInConsumer(DirectDispatch, AsyncJsonWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """These sockets only speak. Whatever a client sends (text that is not JSON, a
        binary frame, JSON of any shape) is answered with an error and changes nothing:
        it is never decoded, so no frame can end the consumer."""
        await self.send_json({"type": "error", "detail": "this socket takes no messages: it only sends updates"})

    async def signed_in_user(self):
        """The session's user, or None after closing the socket with 4401."""
        remember_server_loop(asyncio.get_running_loop())
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return None
        return user

    async def close_for_access(self, code: int) -> None:
        """Close once, however many messages find the access gone."""
        if not getattr(self, "closed_for_access", False):
            self.closed_for_access = True
            await self.close(code=code)


class RunsConsumer(SignedInConsumer):
    """Follows the groups of the user's teams as they are now: a team the user
    leaves is dropped (and its events in flight with it), a team they join added."""

    async def connect(self):
        user = await self.signed_in_user()
        if user is None:
            return
        self.team_ids: set[int] = set()
        self.team_of_run: dict[int, int] = {}
        self.teams_now = access.Recheck(lambda: _readable_team_ids(user))
        if not await self.teams_now.value():
            await self.close(code=4403)  # in no team: there is nothing to follow
            return
        await self.accept()
        if await self._follow_teams():
            self.watch = asyncio.create_task(self._watch())

    async def disconnect(self, code):
        if hasattr(self, "watch"):
            self.watch.cancel()
        for team_id in getattr(self, "team_ids", ()):
            await self.channel_layer.group_discard(team_group(team_id), self.channel_name)

    async def _follow_teams(self) -> bool:
        """Join and leave team groups to match the user's access now; False (and
        the socket closed) once they may see no team at all."""
        now = await self.teams_now.value()
        for team_id in now - self.team_ids:
            await self.channel_layer.group_add(team_group(team_id), self.channel_name)
        for team_id in self.team_ids - now:
            await self.channel_layer.group_discard(team_group(team_id), self.channel_name)
        self.team_ids = now
        if not now:
            await self.close_for_access(4403)
            return False
        return True

    async def _watch(self):
        """Access is also checked with no event going out, so a removed user's
        socket closes without waiting for the next status change."""
        while await self._follow_teams():
            await asyncio.sleep(access.RECHECK_SECONDS)

    async def _may_see(self, run_id) -> bool:
        if not await self._follow_teams():
            return False
        if run_id not in self.team_of_run:
            self.team_of_run[run_id] = await _team_of_run(run_id)
        return self.team_of_run[run_id] in self.team_ids

    async def run_status(self, event):
        if await self._may_see(event.get("run")):
            await self.send_json({"type": "status", **{k: v for k, v in event.items() if k != "type"}})

    async def run_progress(self, event):
        if await self._may_see(event.get("run")):
            await self.send_json({"type": "progress", **{k: v for k, v in event.items() if k != "type"}})

    async def run_waiting(self, event):
        if await self._may_see(event.get("run")):
            await self.send_json({"type": "waiting", **{k: v for k, v in event.items() if k != "type"}})

    async def run_log(self, event):
        pass  # the list page does not show lines


class RunLogsConsumer(SignedInConsumer):
    async def connect(self):
        user = await self.signed_in_user()
        if user is None:
            return
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        self.allowed = access.Recheck(lambda: _may_read_run(user, self.run_id))
        if not await self.allowed.value():
            await self.close(code=4404)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.after = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.after = 0
        self.wake = asyncio.Event()
        self.final_status_sent = self.ended = False
        self.sending = asyncio.Lock()  # one reader of "lines after N" at a time, or lines go out twice
        await self.channel_layer.group_add(run_group(self.run_id), self.channel_name)
        await self.accept()
        self.pump = asyncio.create_task(self._pump())

    async def disconnect(self, code):
        if hasattr(self, "pump"):
            self.pump.cancel()
            await self.channel_layer.group_discard(run_group(self.run_id), self.channel_name)

    async def run_log(self, event):
        self.wake.set()

    async def run_status(self, event):
        if self.ended:
            return  # the final status went out before the end already
        # Lines first: everything up to the status change is sent before it.
        await self._send_new_lines()
        if not await self._still_allowed():
            return
        await self._send_status({k: v for k, v in event.items() if k != "type"})
        self.wake.set()

    async def _send_status(self, change: dict) -> None:
        if change.get("to") in FINAL:
            if self.final_status_sent:
                return  # the pump sent it, reading the run before this message came
            self.final_status_sent = True
        await self.send_json({"type": "status", **change})

    async def _still_allowed(self) -> bool:
        """Checked before every message; a user who lost the run gets the close a
        run that does not exist gets."""
        if await self.allowed.value():
            return True
        if hasattr(self, "pump") and self.pump is not asyncio.current_task():
            self.pump.cancel()
        await self.close_for_access(4404)
        return False

    async def _pump(self):
        try:
            while True:
                if not await self._still_allowed():
                    return
                ended = await self._send_new_lines()
                if ended:
                    # The pump may see the run final before the status change's own
                    # message arrives: the final status always comes before the end.
                    if not self.final_status_sent:
                        await self._send_status(await _final_change(self.run_id))
                    self.ended = True
                    await self.send_json({"type": "end", "status": ended})
                    return
                try:
                    # Not asyncio.wait_for: on Python 3.11 it drops a cancel that comes as
                    # the wake does, and the pump of a closed socket would poll on for good.
                    async with asyncio.timeout(POLL_SECONDS):
                        await self.wake.wait()
                except TimeoutError:
                    pass
                self.wake.clear()
        except asyncio.CancelledError:
            pass

    async def _send_new_lines(self) -> str | None:
        """Send every stored line after self.after; the run's final status once all are sent."""
        async with self.sending:
            return await self._send_lines_unlocked()

    async def _send_lines_unlocked(self) -> str | None:
        while True:
            if not await self._still_allowed():
                return None
            page, status, stored = await _lines_after(self.run_id, self.after)
            if page["lines"]:
                await self.send_json({"type": "lines", "lines": page["lines"]})
                self.after = page["next"]
                if self.after >= stored and status not in FINAL:
                    # All that was stored when this read began: the next flush wakes the
                    # pump (no read that would find nothing, between a flush and the socket).
                    return None
            else:  # a batch may stop short (bytes): read until nothing is left
                return status if page["complete"] and status in FINAL else None


def _readable_team_ids(user) -> set[int]:
    return access.readable_team_ids(access.current_user(user))


def _may_read_run(user, run_id: int) -> bool:
    try:
        access.run_for_user(access.current_user(user), run_id)
    except Run.DoesNotExist:
        return False
    return True


@database_sync_to_async
def _final_change(run_id: int) -> dict:
    """The run's last status change, in the shape live.announce_status sends it."""
    event = RunEvent.objects.filter(run_id=run_id).order_by("-at", "-pk").first()
    if event is None:
        return {"run": run_id, "to": Run.objects.filter(pk=run_id).values_list("status", flat=True).first()}
    return {"run": run_id, "from": event.from_status, "to": event.to_status, "at": event.at.isoformat(), "reason": event.reason}


@database_sync_to_async
def _team_of_run(run_id) -> int | None:
    return Run.objects.filter(pk=run_id).values_list("team_id", flat=True).first()


@database_sync_to_async
def _lines_after(run_id: int, after: int):
    """The page of lines after `after` (logstore.read_lines' page, at most BATCH_LINES
    and about BATCH_BYTES), the run's status and its stored line count: in two
    queries, the chunks that may hold the page read in one (at most a batch's worth of
    lines, so two or three rows), as the live tail asks after every flush."""
    status, stored, complete = Run.objects.filter(pk=run_id).values_list("status", "log_lines", "log_complete").get()
    chunks = LogChunk.objects.filter(
        run_id=run_id, first_line__gt=after - logstore.CHUNK_LINES_BOUND, first_line__lte=after + BATCH_LINES,
    ).order_by("first_line").values_list("first_line", "lines")
    out, used = [], 0
    for first_line, lines in chunks:
        for offset in range(max(0, after + 1 - first_line), len(lines)):
            at, stream, text = lines[offset]
            cost = logstore._line_json_bytes(text)
            if len(out) >= BATCH_LINES or (out and used + cost > BATCH_BYTES):
                break
            used += cost
            out.append({"n": first_line + offset, "t": logstore._iso(at), "stream": logstore.STREAM_NAMES[stream],
                        "text": text})
        else:
            continue
        break
    next_after = out[-1]["n"] if out else after
    return {"lines": out, "next": next_after, "complete": complete and next_after >= stored}, status, stored
