"""Terminal sessions that outlive a dropped connection, and never outlive their welcome.

A session owns a terminal inside a run (runs.executors: a shell exec'd in the
container, or an attach) and reads it: a shell on the event loop of the socket
that opened it while that socket is attached (TerminalSession.start), anything
else, and a shell once dropped, on a thread of its own. What the terminal prints
is kept in a scrollback buffer. When the browser's websocket drops, the session
waits RUNYARD_TERMINAL_KEEP_SECONDS for it to come back with the session id:
it then gets the scrollback and carries on in the same shell. Sessions live in
the Daphne process that opened them.

A shell holds the run's secrets in its environment, so it is ended for certain:
when its keep time passes with nobody attached, when its run ends (seen here
every few seconds, whoever is attached), and when this process exits. Ending it
kills its processes (Terminal.close), not just the connection to them. A user
holds at most RUNYARD_TERMINAL_MAX_SESSIONS sessions at once, in this process.

Each session is on record (terminal.models.TerminalSessionRecord, written by
terminal.audit): one record however often it is resumed, ended by the session (off the
event loop) once the terminal has ended, with how it ended and a shell's exit code. A process
killed outright ends nothing: its records are ended by the reconciler once the
process stops saying it is alive (terminal.consoles; the reaper says it).
"""

import asyncio
import atexit
import logging
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections

from runs.lifecycle import FINAL
from runs.models import Run, Status
from terminal import audit, consoles
from terminal.models import Ending

log = logging.getLogger(__name__)

SCROLLBACK_BYTES = 256 * 1024
REAP_EVERY_SECONDS = 5.0


class TooManySessions(Exception):
    """The user already holds RUNYARD_TERMINAL_MAX_SESSIONS terminals."""


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


class TerminalSession:
    def __init__(self, terminal, *, run_id: int, user_id: int, mode: str, session_id: str = "", record_id: int | None = None):
        self.id = session_id or new_session_id()
        self.terminal, self.run_id, self.user_id, self.mode = terminal, run_id, user_id, mode
        self.record_id = record_id
        self.how: str | None = None  # why it was closed, when something closed it
        self.lock = threading.Lock()
        self.scrollback = bytearray()
        self.listener: Callable[[bytes | None], None] | None = None  # None: the end
        self.detached_at: float | None = None
        self.ended = False
        self.watched = None  # the socket the loop reads, while it does (start)
        self.reader = threading.Thread(target=self._read, name=f"terminal-run-{run_id}", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Read what the terminal prints. While the socket that opened it is attached,
        on that socket's `loop`, where the terminal lets a loop watch it (a shell's
        plain socket): its echo then reaches the socket with no hop between threads.
        Otherwise, and from the first detach on, on a thread of its own, which reads
        on whatever becomes of that loop."""
        if loop is not None:
            self.watched = getattr(self.terminal, "watch_socket", lambda: None)()
        if self.watched is None:
            self.reader.start()
            return
        self.loop = loop
        loop.add_reader(self.watched.fileno(), self._readable)

    def _readable(self) -> None:
        """On the loop: what the shell printed, as far as it has come."""
        try:
            data = self.watched.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._show(data)
            return
        self._unwatch()
        self._show(b"")
        # Ending it waits on the engine and the database: not on the loop.
        threading.Thread(target=self._finish, name=f"terminal-end-{self.run_id}", daemon=True).start()

    def _unwatch(self) -> None:
        """Stop reading on the loop (called on it)."""
        self.loop.remove_reader(self.watched.fileno())
        self.watched.close()
        self.watched = None

    def _read(self) -> None:
        while True:
            data = self.terminal.read()
            self._show(data)
            if not data:
                self._finish()
                return

    def _finish(self) -> None:
        _forget(self)
        self.terminal.close()
        self.record_end()
        connections.close_all()  # this thread's own, opened by record_end

    def _show(self, data: bytes) -> None:
        """Keep it in the scrollback and pass it on; b"" is the end."""
        with self.lock:
            if data:
                self.scrollback += data
                del self.scrollback[:-SCROLLBACK_BYTES]
            else:
                self.ended = True
            listener = self.listener
        if listener is not None:
            listener(data or None)

    def attach(self, listener) -> tuple[bytes, bool]:
        """Send what follows to `listener`; returns what was printed so far, and whether it has ended."""
        with self.lock:
            self.listener, self.detached_at = listener, None
            return bytes(self.scrollback), self.ended

    def detach(self, listener) -> None:
        """The listener's socket has gone (called on its loop)."""
        with self.lock:
            if self.listener is not listener:
                return
            self.listener, self.detached_at = None, time.monotonic()
        if self.watched is not None:  # read on from a thread (start)
            self._unwatch()
            self.reader.start()

    def write_now(self, data: bytes) -> bytes:
        """Send what the terminal takes at once (called from the event loop: a keystroke
        then echoes without a hop through a thread); returns the rest, for write()."""
        send_now = getattr(self.terminal, "write_now", None)
        if self.ended or send_now is None:
            return data
        try:
            return data[send_now(data):]
        except OSError:
            return data  # write() meets it too, and lets it go

    def write(self, data: bytes) -> None:
        if not self.ended:
            try:
                echo = self.terminal.write(data)
            except OSError:
                return
            if echo:  # an attach: the typed line, shown to this session only
                self._show(echo)

    def resize(self, cols: int, rows: int) -> None:
        if not self.ended:
            self.terminal.resize(cols, rows)

    def close(self, how: str = Ending.CLOSED) -> None:
        """End the terminal: its processes are killed; the reader then sees the end.
        `how` goes on record (the first reason given, when several come at once)."""
        with self.lock:
            self.how = self.how or how
        _forget(self)
        try:
            self.terminal.close()
        except Exception:  # one terminal that fails to close must not keep the others open
            log.exception("closing the terminal of run %s failed", self.run_id)


    def record_end(self) -> None:
        """Put the end on record: how, and a shell's exit code (the executor's, where it can tell)."""
        how = self.how or self._ended_by_itself()
        exit_code, note = None, ""
        if self.mode == "shell":
            exit_code = self.terminal.exit_code()
            if exit_code is None:
                note = "the shell's exit code could not be read"
        else:
            note = "attach: the main process's exit code is the run's"
        try:
            audit.record_ended(self.record_id, how, exit_code, note)
        except Exception:
            log.exception("could not record the end of a terminal in run %s", self.run_id)

    def _ended_by_itself(self) -> str:
        """Nobody closed it: a shell that exited (exit, Ctrl-D), or the run's end (an
        attach ends with the main process; a shell with its container)."""
        if self.mode == "shell":
            try:
                if Run.objects.filter(pk=self.run_id, status__in=(Status.RUNNING, Status.IDLE)).exists():
                    return Ending.EXITED
            except Exception:
                return Ending.EXITED
        return Ending.RUN_ENDED


_sessions: dict[str, TerminalSession] = {}
_opening: Counter[int] = Counter()  # per user: terminals being opened, not yet sessions
_sessions_lock = threading.Lock()


@contextmanager
def session_slot(user_id: int) -> Iterator[None]:
    """Hold one of the user's RUNYARD_TERMINAL_MAX_SESSIONS places while a terminal
    is opened (open_session inside the block fills it); TooManySessions if none is free."""
    limit = settings.RUNYARD_TERMINAL_MAX_SESSIONS
    with _sessions_lock:
        held = sum(1 for s in _sessions.values() if s.user_id == user_id) + _opening[user_id]
        if held >= limit:
            raise TooManySessions(f"you have {held} terminals open, the most allowed: close one (or wait for a "
                                  f"dropped one to end, {settings.RUNYARD_TERMINAL_KEEP_SECONDS} s) and try again")
        _opening[user_id] += 1
    try:
        yield
    finally:
        with _sessions_lock:
            _opening[user_id] -= 1
            if not _opening[user_id]:
                del _opening[user_id]


def open_session(terminal, *, run_id: int, user_id: int, mode: str, session_id: str = "",
                 record_id: int | None = None, loop: asyncio.AbstractEventLoop | None = None) -> TerminalSession:
    """A session for an open terminal; `session_id` and `record_id` when its record is written
    already; `loop`: the server's event loop, to read the terminal on (TerminalSession.start)."""
    session = TerminalSession(terminal, run_id=run_id, user_id=user_id, mode=mode, session_id=session_id, record_id=record_id)
    with _sessions_lock:
        _sessions[session.id] = session
    session.start(loop)
    _start_reaper()
    return session


def find_session(session_id: str, *, run_id: int, user_id: int) -> TerminalSession | None:
    """The user's own session in this run, if it is still there: nobody else's."""
    with _sessions_lock:
        session = _sessions.get(session_id)
    if session is None or session.run_id != run_id or session.user_id != user_id or session.ended:
        return None
    return session


def sessions_of_run(run_id: int) -> list[TerminalSession]:
    with _sessions_lock:
        return [s for s in _sessions.values() if s.run_id == run_id]


def _forget(session: TerminalSession) -> None:
    with _sessions_lock:
        _sessions.pop(session.id, None)


def reap(now: float | None = None) -> int:
    """Close sessions left detached longer than RUNYARD_TERMINAL_KEEP_SECONDS, and
    those whose run has ended (attached or not). Returns how many were closed."""
    now = time.monotonic() if now is None else now
    keep = settings.RUNYARD_TERMINAL_KEEP_SECONDS
    with _sessions_lock:
        current = list(_sessions.values())
    stale = [s for s in current if s.detached_at is not None and now - s.detached_at > keep]
    ended_runs = _ended_runs({s.run_id for s in current}) if current else set()
    stale += [s for s in current if s.run_id in ended_runs and s not in stale]
    for session in stale:
        how = Ending.RUN_ENDED if session.run_id in ended_runs else Ending.ABANDONED
        log.info("closing terminal session of run %s: %s", session.run_id, how.label)
        session.close(how)
    return len(stale)


def _ended_runs(run_ids: set[int]) -> set[int]:
    """Which of these runs are over (or gone)."""
    try:
        live = set(Run.objects.filter(pk__in=run_ids).exclude(status__in=FINAL).values_list("pk", flat=True))
    except Exception:  # the database is away for a moment: ask again next time
        log.warning("could not read the status of runs with terminals", exc_info=True)
        return set()
    return run_ids - live


def close_all() -> int:
    """End every session of this process (it is stopping). Its console's own record goes
    once it is silent (terminal.consoles), with none of its sessions open by then."""
    with _sessions_lock:
        current = list(_sessions.values())
    for session in current:
        session.close(Ending.SERVER_STOPPED)
        session.record_end()  # now: the process may be gone before its reader gets to it
    return len(current)


_reaper: threading.Thread | None = None


def _start_reaper() -> None:
    global _reaper
    with _sessions_lock:
        if _reaper is not None:
            return

        def every_few_seconds():
            while True:
                # A short keep time (tests, a strict deployment) is kept within a second or so.
                time.sleep(min(REAP_EVERY_SECONDS, max(0.5, settings.RUNYARD_TERMINAL_KEEP_SECONDS / 2),
                               consoles.beat_seconds()))
                try:
                    if audit.holds_open_records():
                        consoles.beat()  # alive, for the sessions it has on record (terminal.consoles)
                except Exception:
                    log.warning("could not say this console is alive", exc_info=True)
                try:
                    reap()
                except Exception:
                    log.exception("reaping terminal sessions failed")
                finally:
                    connections.close_all()  # this thread's own: none is held between rounds

        _reaper = threading.Thread(target=every_few_seconds, name="terminal-reaper", daemon=True)
        # The server stops (Daphne on SIGTERM/SIGINT, `make run` ended): no shell stays behind.
        atexit.register(close_all)
    _reaper.start()
