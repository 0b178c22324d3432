"""Talking HTTP/1.1 and websockets, as a client, over a byte stream to a port inside a
run (runs.executors.base.PortStream): what the console's port proxy (dashboard/ports.py)
needs and no more. No HTTP library does this over a stream that is not a socket of
its own, and none is a dependency here.

A PortStream blocks; AsyncPortStream lets the event loop use it, with a thread of its
own reading ahead a few chunks at most (a slow browser slows the app down, it does not
fill the console's memory) and another writing.
"""

import asyncio
import base64
import concurrent.futures
import hashlib
import os
import struct
import threading

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one response
MAX_HEADERS = 200
READ_AHEAD_CHUNKS = 4
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolError(Exception):
    """The app's side did not speak HTTP or websocket as it should (or stopped mid-way)."""


class AsyncPortStream:
    def __init__(self, stream):
        self.stream = stream
        self.loop = asyncio.get_running_loop()
        self.chunks: asyncio.Queue = asyncio.Queue(READ_AHEAD_CHUNKS)
        self.buffer = bytearray()
        self.ended = False
        self.closed = threading.Event()
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="port-write")
        threading.Thread(target=self._read_ahead, name="port-read", daemon=True).start()

    def _read_ahead(self) -> None:
        while True:
            data = self.stream.read()
            try:
                handed = asyncio.run_coroutine_threadsafe(self.chunks.put(data), self.loop)
            except RuntimeError:  # the loop is gone: the server is stopping
                return
            while True:
                try:
                    handed.result(timeout=1)
                    break
                except concurrent.futures.TimeoutError:
                    if self.closed.is_set():  # nobody reads on
                        handed.cancel()
                        return
            if not data:
                return

    async def _more(self) -> bool:
        """One more chunk into the buffer; False at the end of the stream."""
        if self.ended:
            return False
        data = await self.chunks.get()
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    async def read_some(self, limit: int = 65536) -> bytes:
        """Up to `limit` bytes, as soon as there are some; b"" at the end."""
        if not self.buffer and not await self._more():
            return b""
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return data

    async def readline(self, limit: int) -> bytes:
        """A line with its \\n; what is left at the end without one; ProtocolError past `limit`."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > limit:
                raise ProtocolError(f"a line longer than {limit} bytes")
            if not await self._more():
                line = bytes(self.buffer)
                self.buffer.clear()
                return line

    async def at_end(self) -> bool:
        """Nothing more will come (waits for the next chunk if none is here)."""
        return not self.buffer and not await self._more()

    async def readexactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._more():
                raise ProtocolError("the connection ended in the middle of a message")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def write(self, data: bytes) -> None:
        await self.loop.run_in_executor(self.writer, self.stream.write, data)

    async def close_write(self) -> None:
        await self.loop.run_in_executor(self.writer, self.stream.close_write)

    async def aclose(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        # Not on the writer's thread: a write blocked there (an app that reads nothing) ends with this.
        await asyncio.to_thread(self.stream.close)
        self.writer.shutdown(wait=False)

    def failure(self) -> str:
        return self.stream.failure()


# ----------------------------------------------------------------- HTTP/1.1


class ResponseHead:
    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]]):
        self.status, self.reason, self.headers = status, reason, headers

    def get(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


async def read_head(stream: AsyncPortStream, *, informational: bool = False) -> ResponseHead | None:
    """The next response's status line and headers (names lowercased); None if the stream
    ended before its first byte. 1xx answers are skipped unless `informational`
    (a websocket's 101 is the answer)."""
    while True:
        line = await stream.readline(MAX_HEAD_BYTES)
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise ProtocolError(f"not an HTTP response: {line[:80]!r}")
        status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        headers, size = [], len(line)
        while True:
            line = await stream.readline(MAX_HEAD_BYTES)
            size += len(line)
            if size > MAX_HEAD_BYTES or len(headers) > MAX_HEADERS:
                raise ProtocolError(f"response headers larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")
            if not line.endswith(b"\n"):
                raise ProtocolError("the connection ended in the middle of the response headers")
            line = line.rstrip(b"\r\n")
            if not line:
                break
            if line[:1] in (b" ", b"\t") and headers:  # an obsolete folded line: part of the one before
                headers[-1] = (headers[-1][0], headers[-1][1] + b" " + line.strip())
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"a malformed response header: {line[:80]!r}")
            headers.append((name.lower(), value.strip()))
        if 100 <= status < 200 and not informational:
            continue
        return ResponseHead(status, reason, headers)


def body_length(head: ResponseHead, method: str) -> int | None | str:
    """How the response's body ends: a byte count (0: no body), "chunked", or None (at the
    end of the stream)."""
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return 0
    encodings = b",".join(head.values(b"transfer-encoding")).lower()
    if encodings:
        if encodings.split(b",")[-1].strip() == b"chunked":
            return "chunked"
        return None
    lengths = {value.strip() for value in b",".join(head.values(b"content-length")).split(b",") if value.strip()}
    if not lengths:
        return None
    if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
        raise ProtocolError("a response with a malformed Content-Length")
    return int(lengths.pop())


async def body_pieces(stream: AsyncPortStream, length: int | None | str):
    """The response body as it arrives, de-chunked."""
    if length == "chunked":
        while True:
            size_line = (await stream.readline(4096)).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"a malformed chunk size: {size_line[:40]!r}") from None
            if size == 0:
                while (await stream.readline(MAX_HEAD_BYTES)).strip():  # trailers: dropped
                    pass
                return
            while size:
                piece = await stream.read_some(min(size, 65536))
                if not piece:
                    raise ProtocolError("the connection ended in the middle of the body")
                size -= len(piece)
                yield piece
            await stream.readexactly(2)
    elif length is None:
        while piece := await stream.read_some():
            yield piece
    else:
        left = length
        while left:
            piece = await stream.read_some(min(left, 65536))
            if not piece:
                raise ProtocolError(f"the connection ended {left} bytes before the end of the body")
            left -= len(piece)
            yield piece


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked request body (b"" ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# ----------------------------------------------------------------- websockets (RFC 6455)

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())


def masked(data: bytes, mask: bytes) -> bytes:
    """`data` XOR its 4-byte mask: masks a client's payload, and unmasks it."""
    if not data:
        return data
    repeated = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def frame_head(opcode: int, size: int, *, mask_bit: int) -> bytes:
    """A final frame's first bytes, up to its mask: opcode and payload length (RFC 6455 §5.2)."""
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, mask_bit | size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, size)


def frame(opcode: int, payload: bytes) -> bytes:
    """One whole frame from a client: masked, as RFC 6455 requires of one."""
    mask = os.urandom(4)
    return frame_head(opcode, len(payload), mask_bit=0x80) + mask + masked(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


class MessageReader:
    """The app's websocket messages, one at a time: TEXT or BINARY with their fragments
    joined, and control frames (PING, PONG, CLOSE), which may come between fragments."""

    def __init__(self, stream: AsyncPortStream, max_bytes: int):
        self.stream, self.max_bytes = stream, max_bytes
        self.opcode: int | None = None  # of the message whose fragments are arriving
        self.parts: list[bytes] = []
        self.size = 0

    async def next(self) -> tuple[int, bytes] | None:
        """(opcode, payload); None if the stream ended between messages."""
        while True:
            if await self.stream.at_end():
                if self.opcode is None:
                    return None
                raise ProtocolError("the connection ended in the middle of a message")
            start = await self.stream.readexactly(2)
            fin, kind = start[0] & 0x80, start[0] & 0x0F
            masked, length = start[1] & 0x80, start[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.stream.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.stream.readexactly(8))[0]
            mask = await self.stream.readexactly(4) if masked else b""  # a server must not mask; read it anyway
            if kind in (CLOSE, PING, PONG):
                if length > 125 or not fin:
                    raise ProtocolError("a malformed control frame")
                payload = await self.stream.readexactly(length)
                return kind, masked(payload, mask) if mask else payload
            if kind not in (CONTINUATION, TEXT, BINARY) or (kind == CONTINUATION) != (self.opcode is not None):
                raise ProtocolError(f"an unexpected frame (opcode {kind})")
            self.size += length
            if self.size > self.max_bytes:
                raise ProtocolError(f"a message larger than {self.max_bytes} bytes")
            payload = await self.stream.readexactly(length)
            self.parts.append(masked(payload, mask) if mask else payload)
            self.opcode = kind if self.opcode is None else self.opcode
            if fin:
                message = (self.opcode, b"".join(self.parts))
                self.opcode, self.parts, self.size = None, [], 0
                return message
