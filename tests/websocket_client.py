"""A websocket client (RFC 6455) on a plain socket, for tests that talk to a real
console (Daphne) the way a browser would: its handshake, its frames, its close."""

import base64
import hashlib
import json
import os
import socket
import struct

from dashboard.port_streams import BINARY, TEXT, frame


class WebSocket:
    """The handshake (status and headers read, the accept checked), masked frames out,
    frames in. `console` is the console's URL ("http://127.0.0.1:8000") or its port;
    `origin` is the console's own address unless given."""

    def __init__(self, console: str | int, path: str, cookie: str | bytes, origin: str = "", protocols: str = ""):
        host, port = ("127.0.0.1", console) if isinstance(console, int) else console.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        cookie = cookie.decode() if isinstance(cookie, bytes) else cookie
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: {origin or f'http://{host}:{port}'}",
                 f"Cookie: {cookie}"]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers = {}
        while (line := self.file.readline().strip()):
            name, _, value = line.decode().partition(":")
            self.headers[name.lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        assert self.status != 101 or self.headers["sec-websocket-accept"] == expected
        self.output = b""  # the binary frames' bytes that `until` gathered

    def send(self, opcode: int, payload: bytes):
        self.sock.sendall(frame(opcode, payload))

    def receive(self) -> tuple[int, bytes]:
        first, second = self._exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        return first & 0x0F, self._exactly(length)

    def next_json(self):
        """The next text frame's JSON; the frames before it (a terminal's bytes) are passed over."""
        while True:
            opcode, payload = self.receive()
            if opcode == TEXT:
                return json.loads(payload)

    def until(self, text: bytes):
        """Gathers the binary frames' bytes into `output` until `text` is among them."""
        while text not in self.output:
            opcode, payload = self.receive()
            if opcode == BINARY:
                self.output += payload

    def close(self):
        self.sock.close()

    def _exactly(self, size: int) -> bytes:
        data = self.file.read(size)
        assert len(data) == size, "the server closed the connection"
        return data
