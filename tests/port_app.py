"""A small web app that tests/test_ports.py runs inside a run (Python 3.8+, standard library
only): HTTP pages and a websocket echo at the address the console serves it under,
/runs/$RUNYARD_RUN_ID/ports/web/, on port $PORT (8000 by default).

    /               a page whose script opens the websocket echo and tries the console's API
    /headers        the request's headers, as JSON
    /upload         (POST) the body's size and SHA-256
    /stream         a chunked answer, in pieces
    /cookies        sets a cookie of its own, one named like the console's, one for "/"
    /away           redirects to the console's API
    /probe?to=H:P,… tries to connect to each address from inside the run
    /echo           the websocket echo
"""

import base64
import hashlib
import json
import os
import socket
import struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PREFIX = f"/runs/{os.environ.get('RUNYARD_RUN_ID', '0')}/ports/web/"
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Port app</title>
<style>body{font-family:sans-serif;margin:2rem} code{background:#eee;padding:0 .3em}</style></head>
<body><h1>Hello from run %(run)s</h1>
<p>Served by an app inside the run, through the console.</p>
<p>Websocket echo: <code id="echo">waiting</code></p>
<p>The console's API, fetched by this page: <code id="console-api">trying</code></p>
<script>
const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "%(prefix)secho");
socket.onopen = () => socket.send("hello through the console");
socket.onmessage = (event) => { document.getElementById("echo").textContent = "echo: " + event.data; };
socket.onerror = () => { document.getElementById("echo").textContent = "websocket failed"; };
fetch("/api/v1/runs", {credentials: "same-origin"})
  .then((answer) => { document.getElementById("console-api").textContent = "reached: " + answer.status; })
  .catch(() => { document.getElementById("console-api").textContent = "blocked"; });
</script></body></html>"""


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if not url.path.startswith(PREFIX):
            return self.answer(404, {"error": "not under " + PREFIX, "path": self.path})
        page = url.path[len(PREFIX):]
        if page == "":
            html = PAGE % {"run": os.environ.get("RUNYARD_RUN_ID"), "prefix": PREFIX}
            return self.answer(200, html.encode(), "text/html; charset=utf-8")
        if page == "headers":
            return self.answer(200, {name.lower(): value for name, value in self.headers.items()} | {"path": self.path})
        if page == "stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in range(5):
                piece = f"piece {n}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return None
        if page == "cookies":
            return self.answer(200, {"set": True}, headers=[
                ("Set-Cookie", f"app=kept; Path={PREFIX}"), ("Set-Cookie", "sessionid=forged; Path=/"),
                ("Set-Cookie", "wide=1; Path=/; Domain=example.org"), ("Strict-Transport-Security", "max-age=31536000"),
                ("Cache-Control", "public, max-age=600"),
            ])
        if page == "away":
            return self.answer(302, b"", "text/plain", headers=[("Location", "/api/v1/runs")])
        if page == "probe":
            results = {}
            for target in parse_qs(url.query).get("to", [""])[0].split(","):
                host, _, port = target.rpartition(":")
                try:
                    socket.create_connection((host, int(port)), timeout=3).close()
                    results[target] = "connected"
                except OSError as exc:
                    results[target] = f"failed: {exc}"
            return self.answer(200, results)
        if page == "echo" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.echo()
        return self.answer(404, {"error": "no page " + page})

    def do_POST(self):
        digest, size = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().split(b";")[0], 16)
                data = self.rfile.read(length)
                self.rfile.readline()
                if not length:
                    break
                digest.update(data)
                size += length
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 65536))
                digest.update(data)
                size, left = size + len(data), left - len(data)
        self.answer(200, {"size": size, "sha256": digest.hexdigest(), "method": self.command})

    do_PUT = do_POST

    def echo(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        asked = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if asked:
            self.send_header("Sec-WebSocket-Protocol", asked[-1])
        self.end_headers()
        self.wfile.flush()
        while True:
            start = self.rfile.read(2)
            if len(start) < 2:
                return
            opcode, length = start[0] & 0x0F, start[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if start[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x8:
                self.send_frame(0x8, payload[:2])
                return
            if opcode in (0x1, 0x2):
                if payload == b"ping me":
                    self.send_frame(0x9, b"are you there")
                self.send_frame(opcode, (b"echo: " if opcode == 0x1 else b"") + payload)

    def send_frame(self, opcode, payload):
        size = len(payload)
        head = struct.pack("!BB", 0x80 | opcode, size) if size < 126 else (
            struct.pack("!BBH", 0x80 | opcode, 126, size) if size < 65536 else struct.pack("!BBQ", 0x80 | opcode, 127, size))
        self.wfile.write(head + payload)
        self.wfile.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), App)
    print("serving", PREFIX, flush=True)
    server.serve_forever()
