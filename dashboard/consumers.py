"""Live updates over websockets (SPEC §5).

/ws/runs/                     status changes of the runs of the user's teams
/ws/runs/{id}/logs/?after=N   the log after line N in batches, then live, then status changes

Both check the session user and (in asgi.py) the Origin. Lines are always read
from the database by number, never forwarded from the collector, so a client that
reconnects with after=N gets exactly the lines after N: no gap, no double.
"""

import asyncio
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runs import logstore
from runs.live import remember_server_loop, run_group, team_group
from runs.lifecycle import FINAL
from runs.models import Membership, Run

BATCH_LINES = 2000
POLL_SECONDS = 2.0  # a missed notification costs at most this long


class SignedInConsumer(AsyncJsonWebsocketConsumer):
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


class RunsConsumer(SignedInConsumer):
    async def connect(self):
        user = await self.signed_in_user()
        if user is None:
            return
        self.groups_joined = [team_group(team_id) for team_id in await _team_ids(user)]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def run_status(self, event):
        await self.send_json({"type": "status", **{k: v for k, v in event.items() if k != "type"}})

    async def run_progress(self, event):
        await self.send_json({"type": "progress", **{k: v for k, v in event.items() if k != "type"}})

    async def run_log(self, event):
        pass  # the list page does not show lines


class RunLogsConsumer(SignedInConsumer):
    async def connect(self):
        user = await self.signed_in_user()
        if user is None:
            return
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        run = await _run_for(user, self.run_id)
        if run is None:
            await self.close(code=4404)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.after = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.after = 0
        self.wake = asyncio.Event()
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
        # Lines first: everything up to the status change is sent before it.
        await self._send_new_lines()
        await self.send_json({"type": "status", **{k: v for k, v in event.items() if k != "type"}})
        self.wake.set()

    async def _pump(self):
        try:
            while True:
                ended = await self._send_new_lines()
                if ended:
                    await self.send_json({"type": "end", "status": ended})
                    return
                try:
                    await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
                except asyncio.TimeoutError:
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
            page, status = await _lines_after(self.run_id, self.after)
            if page["lines"]:
                await self.send_json({"type": "lines", "lines": page["lines"]})
                self.after = page["next"]
            if len(page["lines"]) < BATCH_LINES:
                return status if page["complete"] and status in FINAL else None


@database_sync_to_async
def _team_ids(user) -> list[int]:
    return list(Membership.objects.filter(user=user).values_list("team_id", flat=True))


@database_sync_to_async
def _run_for(user, run_id: int):
    return Run.objects.filter(pk=run_id, team__memberships__user=user).first()


@database_sync_to_async
def _lines_after(run_id: int, after: int):
    run = Run.objects.get(pk=run_id)
    return logstore.read_lines(run, after=after, limit=BATCH_LINES), run.status
