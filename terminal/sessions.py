"""Terminal sessions that outlive a dropped connection.

A session owns a terminal inside a run (runs.executors: a shell exec'd in the
container, or an attach) and a thread that reads it. What the terminal prints
is kept in a scrollback buffer. When the browser's websocket drops, the session
waits RUNYARD_TERMINAL_KEEP_SECONDS for it to come back with the session id:
it then gets the scrollback and carries on in the same shell. Sessions live in
the Daphne process that opened them.
"""

import logging
import secrets
import threading
import time
from collections.abc import Callable

from django.conf import settings

log = logging.getLogger(__name__)

SCROLLBACK_BYTES = 256 * 1024


class TerminalSession:
    def __init__(self, terminal, *, run_id: int, user_id: int, mode: str):
        self.id = secrets.token_urlsafe(18)
        self.terminal, self.run_id, self.user_id, self.mode = terminal, run_id, user_id, mode
        self.lock = threading.Lock()
        self.scrollback = bytearray()
        self.listener: Callable[[bytes | None], None] | None = None  # None: the end
        self.detached_at: float | None = None
        self.ended = False
        self.reader = threading.Thread(target=self._read, name=f"terminal-run-{run_id}", daemon=True)

    def start(self) -> None:
        self.reader.start()

    def _read(self) -> None:
        while True:
            data = self.terminal.read()
            with self.lock:
                if data:
                    self.scrollback += data
                    del self.scrollback[:-SCROLLBACK_BYTES]
                else:
                    self.ended = True
                listener = self.listener
            if listener is not None:
                listener(data or None)
            if not data:
                _forget(self)
                self.terminal.close()
                return

    def attach(self, listener) -> tuple[bytes, bool]:
        """Send what follows to `listener`; returns what was printed so far, and whether it has ended."""
        with self.lock:
            self.listener, self.detached_at = listener, None
            return bytes(self.scrollback), self.ended

    def detach(self, listener) -> None:
        with self.lock:
            if self.listener is listener:
                self.listener, self.detached_at = None, time.monotonic()

    def write(self, data: bytes) -> None:
        if not self.ended:
            try:
                self.terminal.write(data)
            except OSError:
                pass

    def resize(self, cols: int, rows: int) -> None:
        if not self.ended:
            self.terminal.resize(cols, rows)

    def close(self) -> None:
        _forget(self)
        self.terminal.close()


_sessions: dict[str, TerminalSession] = {}
_sessions_lock = threading.Lock()


def open_session(terminal, *, run_id: int, user_id: int, mode: str) -> TerminalSession:
    session = TerminalSession(terminal, run_id=run_id, user_id=user_id, mode=mode)
    with _sessions_lock:
        _sessions[session.id] = session
    session.start()
    _start_reaper()
    return session


def find_session(session_id: str, *, run_id: int, user_id: int) -> TerminalSession | None:
    """The user's own session in this run, if it is still there: nobody else's."""
    with _sessions_lock:
        session = _sessions.get(session_id)
    if session is None or session.run_id != run_id or session.user_id != user_id or session.ended:
        return None
    return session


def _forget(session: TerminalSession) -> None:
    with _sessions_lock:
        _sessions.pop(session.id, None)


def reap(now: float | None = None) -> int:
    """Close sessions left detached longer than RUNYARD_TERMINAL_KEEP_SECONDS."""
    now = time.monotonic() if now is None else now
    keep = settings.RUNYARD_TERMINAL_KEEP_SECONDS
    with _sessions_lock:
        stale = [s for s in _sessions.values() if s.detached_at is not None and now - s.detached_at > keep]
    for session in stale:
        log.info("closing terminal session of run %s: nobody came back for it", session.run_id)
        session.close()
    return len(stale)


_reaper: threading.Thread | None = None


def _start_reaper() -> None:
    global _reaper
    with _sessions_lock:
        if _reaper is not None:
            return

        def every_few_seconds():
            while True:
                time.sleep(5)
                reap()

        _reaper = threading.Thread(target=every_few_seconds, name="terminal-reaper", daemon=True)
    _reaper.start()
