"""/ws/runs/{id}/terminal/?mode=shell|attach[&session=ID&cols=C&rows=R] (SPEC §5).

Terminal bytes travel as binary frames both ways; control messages are JSON text
frames. From the browser: {"type": "resize", "cols", "rows"}, {"type": "close"}.
To the browser: {"type": "session", "id", "mode", "resumed", "writable"} first,
then bytes, then {"type": "exit"} when the shell ends, or {"type": "error",
"detail"} before a close. A dropped connection that comes back with session=ID
within RUNYARD_TERMINAL_KEEP_SECONDS resumes the same shell (terminal/sessions.py).

mode=attach is the main process itself (runs.executors.base.AttachedInput): its
output from the moment of attaching; what is typed goes to its stdin a line at a
time, on Enter, echoed to the one typing only; Ctrl-C (byte 0x03) sends it SIGINT,
which normally ends the run `failed` with exit code 130. Several members may attach
at once: all see the output, each one's lines go to the same stdin. Closing or
dropping an attach leaves the main process running and its stdin open (no EOF).

What a client sends is never trusted: sizes are clamped (cols 2..1000, rows 2..500),
a malformed control frame gets an {"type": "error"} answer and changes nothing, and
whatever ends the consumer (a crash included) lets go of its session, which then
ends after its keep time. A user holds at most RUNYARD_TERMINAL_MAX_SESSIONS
terminals (in this console process); one more is refused with 4429, and on record.

Every session is recorded (terminal.audit): opened, resumed, how it ended.

Under Daphne, keystrokes and what the terminal prints take the keystroke lane
(terminal.lane) when nothing else is in line: the same order, the same checks,
without the per-message machinery.

Only a signed-in member of the run's team who may change its runs gets a shell
(viewers may not); another team's run is closed with 4404, like a missing one.
Access (runs.access) is checked again on input and every second: a user removed
from the team, made a viewer or deactivated has the shell ended and the socket
closed with 4403. The Origin is checked in dashboard/asgi.py.
"""

import asyncio
import json
import logging
import math
import threading
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from dashboard.consumers import DirectDispatch
from runs import access
from runs.executors import executor_for
from runs.executors.base import TERMINAL_MODES, ExecutorError
from runs.lifecycle import FINAL
from runs.live import run_group
from runs.models import Run, Status
from runs.request_json import BodyError, decode_json
from terminal import audit
from terminal.lane import Lane
from terminal.models import Ending
from terminal.sessions import TooManySessions, find_session, new_session_id, open_session, session_slot

log = logging.getLogger(__name__)

OPEN_STATUSES = (Status.RUNNING, Status.IDLE)
MAX_INPUT_BYTES = 1024 * 1024  # a large paste, not more
MAX_CONTROL_BYTES = 4096  # a control message is a few dozen bytes
MAX_COLS, MAX_ROWS = 1000, 500
MIN_SIZE = 2  # Docker ignores a resize to 1 cell, and a 1-cell terminal shows nothing anyway
DEFAULT_SIZE = (80, 24)


class TerminalConsumer(DirectDispatch, AsyncWebsocketConsumer):
    session = None
    lane = None

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
        self.lane = Lane.for_scope(self.scope)  # before accepting: it counts every message from the first
        await self.accept()
        if not allowed:
            return await self._refuse(4403, "viewers cannot open a terminal in a run")
        if mode not in TERMINAL_MODES:
            return await self._refuse(4400, f"mode must be one of {', '.join(TERMINAL_MODES)}")
        if run.status not in OPEN_STATUSES:
            return await self._refuse(4409, f"the run is {run.status}: a terminal needs a running or idle run")
        cols, rows = _size_from_query(query.get("cols", [""])[0], query.get("rows", [""])[0])

        self.outbox: asyncio.Queue = asyncio.Queue()
        self.unsent = 0  # pieces put in the outbox and not yet sent: the lane waits for them
        loop = asyncio.get_running_loop()
        on_loop = threading.get_ident()

        def listener(data):
            # A shell is read on this loop (TerminalSession.start); an attach on a thread.
            if threading.get_ident() == on_loop:
                self._output(data)
            else:
                loop.call_soon_threadsafe(self._output, data)

        self.listener = listener
        wanted = query.get("session", [""])[0]
        session = find_session(wanted, run_id=run.pk, user_id=user.pk) if wanted else None
        resumed = session is not None
        if session is None:
            try:
                with session_slot(user.pk):
                    terminal = await sync_to_async(executor.open_terminal, thread_sensitive=False)(run, mode, cols, rows)
                    # On record before its reader starts: a shell that ends at once still ends on record.
                    session_id = new_session_id()
                    record_id = await database_sync_to_async(audit.record_opened)(session_id, run, user, mode)
                    session = open_session(terminal, run_id=run.pk, user_id=user.pk, mode=mode,
                                           session_id=session_id, record_id=record_id, loop=loop)
            except TooManySessions as exc:
                await database_sync_to_async(audit.record_refused)(run, user, mode, str(exc))
                return await self._refuse(4429, str(exc))
            except ExecutorError as exc:
                return await self._refuse(4409, str(exc))
            log.info("%s opened a %s terminal in run %s", user.get_username(), mode, run.pk)
        else:
            await sync_to_async(session.resize, thread_sensitive=False)(cols, rows)
            await database_sync_to_async(audit.record_resumed)(session.record_id)
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
            self._output(None)
        self.pump = asyncio.create_task(self._pump())
        if self.lane is not None:
            self.lane.open(self._lane_keystrokes)

    async def _refuse(self, code: int, detail: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "detail": detail}))
        await self.close(code=code)

    def _output(self, data: bytes | None) -> None:
        """What the terminal printed (None: it ended), on the loop: straight out on the
        lane when nothing is waiting before it, else in line for the pump."""
        if data is not None and not self.unsent and self.lane is not None and self.lane.send(data):
            return
        self.unsent += 1
        self.outbox.put_nowait(data)

    async def _pump(self):
        """What the terminal prints, in frames; several pieces that piled up go as one."""
        while True:
            data = await self.outbox.get()
            pieces = 1
            while data is not None and not self.outbox.empty() and len(data) < 65536:
                more = self.outbox.get_nowait()
                if more is None:
                    self.outbox.put_nowait(None)
                    break
                data += more
                pieces += 1
            if data is None:
                await self.send(text_data=json.dumps({"type": "exit"}))
                await self.close(code=1000)
                return
            await self.send(bytes_data=data)
            self.unsent -= pieces

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
            if self.lane is not None:
                self.lane.close()
            await sync_to_async(self.session.close, thread_sensitive=False)(Ending.ACCESS_LOST)
            await self._refuse(4403, "you no longer have access to a terminal in this run")
        return False

    async def _watch_access(self):
        while await self._still_allowed():
            await asyncio.sleep(access.RECHECK_SECONDS)

    async def _warn(self, detail: str) -> None:
        """A frame that could not be used: say so, keep the terminal."""
        await self.send(text_data=json.dumps({"type": "error", "detail": detail}))

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However this consumer ends (a normal close, a crash, the server stopping),
            # its session is let go: it then ends after its keep time, never lives on unwatched.
            self._let_go()

    def _let_go(self) -> None:
        if self.lane is not None:
            self.lane.close()
        if self.session is not None and hasattr(self, "listener"):
            self.session.detach(self.listener)
        if hasattr(self, "pump"):
            self.pump.cancel()
        if hasattr(self, "watch"):
            self.watch.cancel()

    async def websocket_receive(self, message):
        try:
            await super().websocket_receive(message)
        finally:
            if self.lane is not None:
                self.lane.handled()  # the lane may carry keystrokes again once nothing is in line

    def _lane_keystrokes(self, data: bytes) -> bytes:
        """Keystrokes off the lane, on the loop: sent now when access was confirmed within
        the second and the shell takes them at once; what is left goes in line, to receive()."""
        if not self.allowed.fresh() or not self.session.terminal.writable:
            return data
        return self.session.write_now(data)

    async def receive(self, text_data=None, bytes_data=None):
        if self.session is None or not await self._still_allowed():
            return
        try:
            if bytes_data is not None:
                await self._keystrokes(bytes_data)
            else:
                await self._control(text_data or "")
        except Exception:  # nothing a client sends may end the consumer
            log.exception("terminal input for run %s failed", self.session.run_id)
            await self._warn("that message could not be handled")

    async def _keystrokes(self, data: bytes) -> None:
        if not self.session.terminal.writable:
            return
        if len(data) > MAX_INPUT_BYTES:
            return await self._warn(f"input of more than {MAX_INPUT_BYTES} bytes in one frame is dropped")
        # Keystrokes are handled one message at a time: what a thread still sends is
        # sent before the next message's bytes go.
        rest = self.session.write_now(data)
        if rest:
            await sync_to_async(self.session.write, thread_sensitive=False)(rest)

    async def _control(self, text: str) -> None:
        if len(text) > MAX_CONTROL_BYTES:
            return await self._warn(f"a control message is at most {MAX_CONTROL_BYTES} bytes")
        try:
            message = decode_json(text.encode("utf-8", "replace"), max_bytes=MAX_CONTROL_BYTES, max_depth=2)
        except BodyError as exc:
            return await self._warn(f"a control message is a JSON object: {exc.errors[0]['msg']}")
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "resize":
            size = _size(message.get("cols"), message.get("rows"))
            if size is None:
                return await self._warn(f"resize needs numbers: cols {MIN_SIZE}..{MAX_COLS}, rows {MIN_SIZE}..{MAX_ROWS}")
            await sync_to_async(self.session.resize, thread_sensitive=False)(*size)
        elif kind == "close":
            await sync_to_async(self.session.close, thread_sensitive=False)(Ending.CLOSED)
        else:
            await self._warn('a control message is {"type": "resize", "cols": C, "rows": R} or {"type": "close"}')

    async def run_status(self, event):
        """The run has ended: so has its terminal (a local shell would outlive it)."""
        if event.get("to") in FINAL and self.session is not None:
            await sync_to_async(self.session.close, thread_sensitive=False)(Ending.RUN_ENDED)

    async def run_log(self, event):
        pass

    async def disconnect(self, code):
        self._let_go()  # the session is kept for a while: the browser may come back
        if self.lane is not None and self.session is not None:
            lane = self.lane
            log.info("terminal %s in run %s closed: the keystroke lane took %d of %d messages in and sent %d frames out",
                     self.session.id, self.session.run_id, lane.taken, lane.taken + lane.queued, lane.sent)
        if self.session is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)


def _clamped(value, top: int) -> int | None:
    """A whole number of cells within MIN_SIZE..top from a JSON number; None for
    anything else (a string, a bool, null, inf, nan, a mapping)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(MIN_SIZE, min(top, int(value)))  # an int past any float (10**400) is clamped too


def _size(cols, rows) -> tuple[int, int] | None:
    """The terminal size a resize asks for, clamped; None if it is not two numbers."""
    cols, rows = _clamped(cols, MAX_COLS), _clamped(rows, MAX_ROWS)
    return None if cols is None or rows is None else (cols, rows)


def _size_from_query(cols: str, rows: str) -> tuple[int, int]:
    """The first size, from the URL: what is not a whole number falls back to 80x24."""

    def number(text: str, default: int, top: int) -> int:
        text = text.strip()
        if not text.isascii() or not text.isdigit():
            return default
        return top if len(text) > 6 else max(MIN_SIZE, min(top, int(text)))

    return number(cols, DEFAULT_SIZE[0], MAX_COLS), number(rows, DEFAULT_SIZE[1], MAX_ROWS)


@database_sync_to_async
def _run_and_rights(user, run_id: int):
    """The run, whether the user may open a terminal in it, and its executor
    (found here: it may read the database, and only this thread may)."""
    try:
        run = access.run_for_user(user, run_id)
    except Run.DoesNotExist:
        return None, False, None
    return run, access.may(user, access.Action.TERMINAL, run.team), executor_for(run)


def _may_open_terminal(user, run_id: int) -> bool:
    user = access.current_user(user)
    try:
        run = access.run_for_user(user, run_id)
    except Run.DoesNotExist:
        return False
    return access.may(user, access.Action.TERMINAL, run.team)
