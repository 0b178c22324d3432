"""The keystroke lane: a shell's keystrokes and echoes straight between Daphne's
socket and the shell, past the per-message machinery, on the same event loop.

Under Daphne a keystroke's frame passes autobahn's frame parser, Daphne's queue and
Channels' dispatch; its echo goes back through Channels' send, Daphne's reply,
autobahn's framing and a turn of Twisted's writer. That was about 1.4 ms of a 2.2 ms
echo here, where a raw `docker exec` shell echoes in 0.7 ms (`make bench`,
terminal-echo). The lane takes the common case off that path:

- In: the whole, final, masked binary frames of at most SMALL bytes (a keystroke, a
  burst of typing) that begin a read from the socket, arriving while no message of
  this client waits in Daphne's queue or is being handled, go straight to the
  consumer (`on_keys`). Anything else (text and control frames, a frame split across
  reads, a large paste, a closing socket) goes autobahn's way into the queue, and so
  does everything after it until the consumer has handled the queue: the shell gets
  the client's bytes in the order they were sent.
- Out: `send` frames what the shell printed and writes it to the socket itself when
  Twisted holds nothing unsent for it; what the socket does not take at once waits
  in Twisted's buffer, in order. The consumer sends through Channels instead while
  its own outbox holds something, and for everything that is not terminal bytes.

Everything here reads Daphne's, autobahn's and Twisted's internals (a protocol's
state, its read buffer, the transport's write buffers): they are read in this module
only, and tests/test_terminal_lane.py checks them against the installed versions.
Anywhere else (Channels' test communicator, TLS terminated by Twisted for the
writes) the lane is absent or writes through Twisted, and the consumer works as
before.
"""

import functools
import logging
import time

from dashboard.port_streams import BINARY, frame_head, masked

log = logging.getLogger(__name__)

SMALL = 125  # the payloads a frame's 7-bit length holds
SCOPE_KEY = "runyard.websocket_protocol"
FINAL_BINARY = 0x80 | BINARY  # FIN, no RSV bits
MASKED = 0x80
# What the lane reads of a Daphne WebSocketProtocol (autobahn's state) and of its transport (Twisted's).
PROTOCOL_READS = ("state", "STATE_OPEN", "send_state", "SEND_STATE_GROUND", "data", "current_frame",
                  "inside_message", "muted", "last_ping", "onMessage", "dataReceived")
TRANSPORT_READS = ("write", "connected", "disconnecting", "_tempDataLen", "offset", "dataBuffer")


def daphne_protocol(send):
    """The Daphne WebSocket protocol behind an ASGI `send` (Daphne hands each
    application partial(Server.handle_reply, protocol)), or None."""
    from daphne.ws_protocol import WebSocketProtocol

    if isinstance(send, functools.partial) and getattr(send.func, "__name__", "") == "handle_reply":
        protocol = send.args[0] if send.args else None
        if isinstance(protocol, WebSocketProtocol):
            return protocol
    return None


def expose_protocol(application):
    """ASGI middleware, outermost on websockets: puts the Daphne protocol of the
    connection in the scope (SCOPE_KEY), before the middleware inside wraps `send`."""

    async def with_protocol(scope, receive, send):
        protocol = daphne_protocol(send)
        if protocol is not None:
            scope = {**scope, SCOPE_KEY: protocol}
        return await application(scope, receive, send)

    return with_protocol


class Lane:
    """One terminal socket's lane. `on_keys(payload) -> rest` takes keystrokes on the
    loop and returns what it did not deal with (b"" for all of it); the rest is queued
    as a message of its own. `handled()` is called once per message the consumer
    received from Daphne's queue, when it is done with it."""

    def __init__(self, protocol):
        from twisted.internet.tcp import Connection

        self.protocol = protocol
        self.transport = protocol.transport
        self.on_keys = None  # set by open(): until then nothing goes by the lane
        self.in_line = 0  # messages put in Daphne's queue and not yet handled
        self.taken = self.queued = self.sent = 0  # messages the lane took, messages queued, frames it sent
        self.direct = isinstance(self.transport, Connection)  # plain TCP: the socket is ours to write
        self._read_by_autobahn = protocol.dataReceived
        self._queue_message = protocol.onMessage
        protocol.dataReceived = self._data_received
        protocol.onMessage = self._on_message

    @classmethod
    def for_scope(cls, scope) -> "Lane | None":
        """The lane of the connection in `scope`, made before the socket is accepted
        (it counts every message from the first); None outside Daphne."""
        protocol = scope.get(SCOPE_KEY)
        if protocol is None or getattr(protocol, "transport", None) is None:
            return None
        return cls(protocol)

    def open(self, on_keys) -> bool:
        """The consumer is ready: keystrokes go to `on_keys`, and send() writes. Stays
        shut (False, with a warning) where the installed Daphne, autobahn or Twisted no
        longer look as the lane reads them."""
        missing = [name for name in PROTOCOL_READS if not hasattr(self.protocol, name)]
        missing += [name for name in TRANSPORT_READS if not hasattr(self.transport, name)]
        if missing:
            log.warning("the keystroke lane stays shut: the websocket connection has no %s", ", ".join(missing))
            return False
        self.on_keys = on_keys
        return True

    def close(self) -> None:
        """The consumer is gone, or ending the terminal: nothing more goes by the lane."""
        self.on_keys = None

    # ------------------------------------------------------------------ in

    def _on_message(self, payload: bytes, is_binary: bool) -> None:
        """Autobahn's way: a message for Daphne's queue, counted until handled."""
        if not self.protocol.muted:
            self.in_line += 1
            self.queued += 1
        self._queue_message(payload, is_binary)

    def handled(self) -> None:
        self.in_line = max(0, self.in_line - 1)

    def _data_received(self, data: bytes) -> None:
        protocol = self.protocol
        payloads, read = [], 0
        if (self.on_keys is not None and not self.in_line and protocol.state == protocol.STATE_OPEN
                and not protocol.data and protocol.current_frame is None and not protocol.inside_message
                and not protocol.muted):
            payloads, read = small_binary_frames(data)
        if payloads:
            protocol.last_ping = time.time()  # Daphne's keepalive counts any message
        for payload in payloads:
            rest = payload
            if not self.in_line and self.on_keys is not None:
                try:
                    rest = self.on_keys(payload)
                except Exception:  # nothing a client sends may break the socket
                    log.exception("terminal keystrokes on the lane failed")
                    rest = b""
                self.taken += not rest
            if rest:
                self._on_message(rest, True)
        if read < len(data):
            self._read_by_autobahn(data[read:])

    # ------------------------------------------------------------------ out

    def send(self, data: bytes) -> bool:
        """Write terminal bytes as one binary frame; False when the socket is not
        plainly open for them (the caller then sends through Channels)."""
        protocol, transport = self.protocol, self.transport
        if (self.on_keys is None or protocol.state != protocol.STATE_OPEN
                or protocol.send_state != protocol.SEND_STATE_GROUND):
            return False
        frame = server_frame(data)
        if (self.direct and transport.connected and not transport.disconnecting
                and not transport._tempDataLen and transport.offset == len(transport.dataBuffer)):
            try:
                written = transport.socket.send(frame)
            except OSError:  # full (BlockingIOError), or broken: Twisted's own write meets it and closes
                written = 0
            frame = frame[written:]
        if frame:
            transport.write(frame)
        self.sent += 1
        return True


def small_binary_frames(data: bytes) -> tuple[list[bytes], int]:
    """The unmasked payloads of the whole, final, masked binary frames of at most
    SMALL bytes each that `data` begins with, and how many bytes they took."""
    payloads = []
    at, end = 0, len(data)
    while end - at >= 6 and data[at] == FINAL_BINARY and data[at + 1] & MASKED:
        size = data[at + 1] & 0x7F
        start = at + 6
        if size > SMALL or start + size > end:
            break
        payloads.append(masked(data[start:start + size], data[at + 2:start]))
        at = start + size
    return payloads, at


def server_frame(data: bytes) -> bytes:
    """One final, unmasked binary frame (RFC 6455 §5.2)."""
    return frame_head(BINARY, len(data), mask_bit=0) + data
