"""A cap on every request body, applied before anything reads it (issue 7).

Archive uploads (dataset versions, code snapshots, the admin's dataset upload) and
requests to an app a run serves (/runs/{id}/ports/...) may send
RUNYARD_MAX_UPLOAD_BYTES; everything else (pages, run specs, secrets) sends
RUNYARD_MAX_REQUEST_BYTES. A body over its cap is answered 413 from its
Content-Length, or as soon as the streamed bytes pass the cap, and is never kept:
JSON `{detail, errors}` under /api/, a short page elsewhere.

Two places apply it: `BodyLimitMiddleware` in front of the HTTP app (any ASGI
server), and `guard_daphne`, because Daphne reads a whole body and then queues all
of it for the application at once (daphne.http_protocol.WebRequest.process): by the
time an ASGI middleware could refuse it, the memory is spent. The same queueing
would hold an accepted 2 GiB dataset upload in memory, so under Daphne a body is
handed to the application from the file Daphne spooled it to, as it is read.
"""

import asyncio
import html
import json
import re
from urllib.parse import urlsplit

from django.conf import settings

ARCHIVE_UPLOADS = re.compile(r"/api/v1/datasets/[^/]+/versions/?|/api/v1/code/?|/admin/runs/dataset/add/?")
# An app served from a run's port (dashboard/ports.py) takes what it takes: a notebook, a file upload.
PORT_PATHS = re.compile(r"/runs/[0-9]+/ports/.*", re.DOTALL)


def limit_for(path: str) -> int:
    """The largest body a request to `path` may send."""
    if ARCHIVE_UPLOADS.fullmatch(path) or PORT_PATHS.fullmatch(path):
        return settings.RUNYARD_MAX_UPLOAD_BYTES
    return settings.RUNYARD_MAX_REQUEST_BYTES


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def too_large(path: str, limit: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The 413 answer's headers and body for a request to `path`."""
    detail = f"the request body is larger than {_size(limit)}"
    if path.startswith("/api/"):
        body = json.dumps({"detail": detail, "errors": [{"loc": "body", "msg": f"at most {limit} bytes"}]}).encode()
        content_type = b"application/json"
    else:
        hint = ""
        if path.rstrip("/") == "/runs/new":
            hint = " A run spec can be at most 256 KiB: upload the YAML file, not data or code."
        back = html.escape(path)
        body = (
            "<!doctype html><html><head><meta charset=utf-8><title>Upload too large · Runyard</title></head>"
            f"<body style=\"font-family:sans-serif;margin:3rem\"><h1>Upload too large</h1>"
            f"<p>{html.escape(detail[0].upper() + detail[1:])}.{html.escape(hint)}</p>"
            f"<p><a href=\"{back}\">Go back</a></p></body></html>"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    return headers, body


def _declared_length(headers) -> int | None:
    """Content-Length, or None if absent; an unreadable one counts as too large."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 1 << 62
    return None


class BodyLimitMiddleware:
    """ASGI middleware: refuses an over-cap body from its Content-Length, and counts
    streamed bytes for the rest; past the cap the app sees a disconnect and the
    client gets the 413."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, limit = scope["path"], limit_for(scope["path"])
        declared = _declared_length(scope.get("headers", []))
        if declared is not None and declared > limit:
            await _send_too_large(send, path, limit)
            return None
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _send_too_large(send, path, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the 413 is the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        return await self.app(scope, limited_receive, guarded_send)


async def _send_too_large(send, path: str, limit: int) -> None:
    headers, body = too_large(path, limit)
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _SpooledBodyQueue(asyncio.Queue):
    """Daphne's queue for one HTTP request, made to keep only how much body it was
    given: the bytes are read from the request's spooled file when the application
    asks for them, 1 MiB at a time."""

    CHUNK = 1 << 20
    BODY = {"type": "runyard.body"}  # stands in the queue for the body not yet read

    def spool_from(self, content) -> None:
        self.content, self.body_end, self.body_at, self.body_final, self.body_waiting = content, 0, 0, False, False

    def _put(self, item):
        if item.get("type") != "http.request":
            self._queue.append(item)
            return
        self.body_end += len(item.get("body", b""))  # what Daphne read from the file, dropped here
        self.body_final = not item.get("more_body", False)
        if not self.body_waiting:
            self.body_waiting = True
            self._queue.append(self.BODY)

    def _get(self):
        if self._queue[0] is not self.BODY:
            return self._queue.popleft()
        if self.content.closed:
            self._queue.popleft()
            return {"type": "http.disconnect"}
        length = min(self.CHUNK, self.body_end - self.body_at)
        self.content.seek(self.body_at)
        chunk = self.content.read(length)
        self.body_at += len(chunk)
        done = self.body_at >= self.body_end or len(chunk) < length
        if done:
            self._queue.popleft()
            self.body_waiting = False
        return {"type": "http.request", "body": chunk, "more_body": not (done and self.body_final)}


def guard_daphne() -> None:
    """Make Daphne drop an over-cap body as it arrives (nothing kept in memory or on
    disk) and answer 413 without starting the application; and hand an accepted
    body to the application from its spooled file rather than from memory."""
    try:
        from daphne.http_protocol import WebRequest
        from daphne.server import Server
    except ImportError:  # another server: the middleware alone applies
        return
    if getattr(WebRequest, "runyard_body_limit", False):
        return
    got_length, handle_chunk, process = WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process
    create_application = Server.create_application

    def gotLength(self, length):
        # The request line is parsed, the request object not filled yet: the channel has the path.
        raw = getattr(self.channel, "_path", b"") or b""
        self.runyard_path = urlsplit(raw.decode("ascii", "replace")).path  # also for an absolute-form target
        self.runyard_limit = limit_for(self.runyard_path) if raw else settings.RUNYARD_MAX_UPLOAD_BYTES
        self.runyard_received = 0
        self.runyard_over = length is not None and length > self.runyard_limit
        got_length(self, 0 if self.runyard_over else length)

    def handleContentChunk(self, data):
        self.runyard_received += len(data)
        if self.runyard_received > self.runyard_limit:
            self.runyard_over = True
        if not self.runyard_over:
            handle_chunk(self, data)

    def process_within_limit(self):
        if not getattr(self, "runyard_over", False):
            return process(self)
        self.content.close()  # what arrived before the cap was passed
        headers, body = too_large(self.runyard_path, self.runyard_limit)
        self.handle_reply({"type": "http.response.start", "status": 413, "headers": headers})
        self.handle_reply({"type": "http.response.body", "body": body})
        return None

    def create_application_spooled(self, protocol, scope):
        queue = create_application(self, protocol, scope)
        if queue is not None and isinstance(protocol, WebRequest) and type(queue) is asyncio.Queue:
            # Daphne fills the queue right after this returns, before the application runs.
            queue.__class__ = _SpooledBodyQueue
            queue.spool_from(protocol.content)
        return queue

    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = process_within_limit
    Server.create_application = create_application_spooled
    WebRequest.runyard_body_limit = True
