"""/ws/runs/{id}/terminal/?mode=shell|attach[&session=ID&cols=C&rows=R] (SPEC §5).

Terminal bytes travel as binary frames both ways; control messages are JSON text
frames. From the browser: {"type": "resize", "cols", "rows"}, {"type": "close"}.
To the browser: {"type": "session", "id", "mode", "resumed", "writable"} first,
then bytes, then {"type": "exit"} when the shell ends, or {"type": "error",
"detail"} before a close. A dropped connection that comes back with session=ID
within RUNYARD_TERMINAL_KEEP_SECONDS resumes the same shell (terminal/sessions.py).

Only a signed-in member of the run's team who may change its runs gets a shell
(viewers may not); another team's run is closed with 4404, like a missing one.
Access (runs.access) is checked again on input and every second: a user removed
from the team, made a viewer or deactivated has the shell ended and the socket
closed with 4403. The Origin is checked in dashboard/asgi.py.
"""

import asyncio
import json
import logging
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from runs import access
from runs.executors import get_executor
from runs.executors.base import TERMINAL_MODES, ExecutorError
from runs.lifecycle import FINAL
from runs.live import run_group
from runs.models import Run, Status
from terminal.sessions import find_session, open_session

log = logging.getLogger(__name__)

OPEN_STATUSES = (Status.RUNNING, Status.IDLE)
MAX_INPUT_BYTES = 1024 * 1024  # a large paste, not more


class TerminalConsumer(AsyncWebsocketConsumer):
    session = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        run, allowed, executor = await _run_and_rights(user, run_id)
        if run is None:
            await self.close(code=4404)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        mode = query.get("mode", ["shell"])[0]
        await self.accept()
        if not allowed:
            return await self._refuse(4403, "viewers cannot open a terminal in a run")
        if mode not in TERMINAL_MODES:
            return await self._refuse(4400, f"mode must be one of {', '.join(TERMINAL_MODES)}")
        if run.status not in OPEN_STATUSES:
            return await self._refuse(4409, f"the run is {run.status}: a terminal needs a running or idle run")
        cols, rows = _size(query.get("cols", [None])[0], query.get("rows", [None])[0])

        self.outbox: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.listener = lambda data: loop.call_soon_threadsafe(self.outbox.put_nowait, data)
        wanted = query.get("session", [""])[0]
        session = find_session(wanted, run_id=run.pk, user_id=user.pk) if wanted else None
        resumed = session is not None
        if session is None:
            try:
                terminal = await sync_to_async(executor.open_terminal, thread_sensitive=False)(run, mode, cols, rows)
            except ExecutorError as exc:
                return await self._refuse(4409, str(exc))
            session = open_session(terminal, run_id=run.pk, user_id=user.pk, mode=mode)
            log.info("%s opened a %s terminal in run %s", user.get_username(), mode, run.pk)
        else:
            await sync_to_async(session.resize, thread_sensitive=False)(cols, rows)
        self.session = session
        self.allowed = access.Recheck(lambda: _may_open_terminal(user, run.pk))
        self.watch = asyncio.create_task(self._watch_access())
        self.group = run_group(run.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        earlier, ended = session.attach(self.listener)
        await self.send(text_data=json.dumps({
            "type": "session", "id": session.id, "mode": session.mode, "resumed": resumed,
            "writable": session.terminal.writable, "resume_seconds": settings.RUNYARD_TERMINAL_KEEP_SECONDS,
        }))
        if earlier:
            await self.send(bytes_data=earlier)
        if ended:
            self.outbox.put_nowait(None)
        self.pump = asyncio.create_task(self._pump())

    async def _refuse(self, code: int, detail: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "detail": detail}))
        await self.close(code=code)

    async def _pump(self):
        """What the terminal prints, in frames; several pieces that piled up go as one."""
        while True:
            data = await self.outbox.get()
            while data is not None and not self.outbox.empty() and len(data) < 65536:
                more = self.outbox.get_nowait()
                if more is None:
                    self.outbox.put_nowait(None)
                    break
                data += more
            if data is None:
                await self.send(text_data=json.dumps({"type": "exit"}))
                await self.close(code=1000)
                return
            await self.send(bytes_data=data)

    async def _still_allowed(self) -> bool:
        """False, with the shell ended and the socket closed, once the user may no
        longer have a terminal in this run."""
        if await self.allowed.value():
            return True
        if not getattr(self, "closed_for_access", False):
            self.closed_for_access = True
            log.info("closing a terminal in run %s: its user lost access", self.session.run_id)
            if hasattr(self, "pump"):
                self.pump.cancel()  # its "exit" would come first and say the shell just ended
            await sync_to_async(self.session.close, thread_sensitive=False)()
            await self._refuse(4403, "you no longer have access to a terminal in this run")
        return False

    async def _watch_access(self):
        while await self._still_allowed():
            await asyncio.sleep(access.RECHECK_SECONDS)

    async def receive(self, text_data=None, bytes_data=None):
        if self.session is None or not await self._still_allowed():
            return
        if bytes_data is not None:
            if self.session.terminal.writable and len(bytes_data) <= MAX_INPUT_BYTES:
                await sync_to_async(self.session.write, thread_sensitive=False)(bytes_data)
            return
        try:
            message = json.loads(text_data or "")
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "resize":
            cols, rows = _size(message.get("cols"), message.get("rows"))
            await sync_to_async(self.session.resize, thread_sensitive=False)(cols, rows)
        elif message.get("type") == "close":
            await sync_to_async(self.session.close, thread_sensitive=False)()

    async def run_status(self, event):
        """The run has ended: so has its terminal (a local shell would outlive it)."""
        if event.get("to") in FINAL and self.session is not None:
            await sync_to_async(self.session.close, thread_sensitive=False)()

    async def run_log(self, event):
        pass

    async def disconnect(self, code):
        if self.session is not None:
            self.session.detach(self.listener)  # kept for a while: the browser may come back
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if hasattr(self, "pump"):
            self.pump.cancel()
        if hasattr(self, "watch"):
            self.watch.cancel()


def _size(cols, rows) -> tuple[int, int]:
    """A terminal size from what the browser sent; 80x24 for what is not a number."""

    def number(value, default: int, top: int) -> int:
        try:
            return max(2, min(top, int(value)))
        except (TypeError, ValueError):
            return default

    return number(cols, 80, 500), number(rows, 24, 200)


@database_sync_to_async
def _run_and_rights(user, run_id: int):
    """The run, whether the user may open a terminal in it, and its executor
    (found here: it may read the database, and only this thread may)."""
    try:
        run = access.run_for_user(user, run_id)
    except Run.DoesNotExist:
        return None, False, None
    return run, access.may(user, access.Action.TERMINAL, run.team), get_executor(run.executor)


def _may_open_terminal(user, run_id: int) -> bool:
    user = access.current_user(user)
    try:
        run = access.run_for_user(user, run_id)
    except Run.DoesNotExist:
        return False
    return access.may(user, access.Action.TERMINAL, run.team)
