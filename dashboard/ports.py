"""/runs/{id}/ports/{name-or-port}/...: a live run's http port, served through the console
(SPEC §8; who may reach which port, and when: runs/ports.py). HTTP of any method and
websockets, each connection made from inside the run (executor.open_port).

Plain ASGI in front of Django (dashboard/asgi.py), not a view: bodies stream both ways
as they come, and the app's headers reach the browser as it sent them (a view could not
send two Set-Cookie headers), but for what follows. The app sees the whole path, its
address included, and X-Forwarded-Prefix / X-Script-Name saying what that address is;
an app that makes its own links must be told it (TensorBoard --path_prefix, Jupyter
--ServerApp.base_url: docs/run-file.md).

The app is served on the console's own origin, so what it sends could act as the console
in the browser of whoever opens it, with their session. Hence:
- the console's cookies (session, CSRF, messages) are taken out of what the app receives;
- the app's cookies cannot bear the console's names, nor be set for other paths or hosts
  (a Path off its address becomes its address, Domain is dropped);
- headers that bind the whole origin are dropped (HSTS, Alt-Svc, Clear-Site-Data,
  Service-Worker-Allowed, NEL and the reporting ones);
- its pages get a Content-Security-Policy of their own, not the console's: scripts, styles
  and images from anywhere, but what can read or change something (fetch, XHR,
  websockets, form posts, frames, workers) only to its own address, and a sandbox without
  popups (a window it opened on a console page would be its to script);
- a redirect off its own address is refused (after a redirect, browsers no longer check
  a policy's paths);
- a shared cache never keeps its answers (Cache-Control: private).
What one origin still shares is its storage (localStorage, IndexedDB, cookies written by
script for "/"): docs/deployment.md says what that means for a deployment.
"""

import asyncio
import logging
import re
import struct
from urllib.parse import quote, urlencode, urljoin, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.template.loader import render_to_string

from dashboard.csp import POLICY
from dashboard.port_streams import (
    BINARY, CLOSE, PING, PONG, TEXT, AsyncPortStream, MessageReader, ProtocolError, accept_for, body_length,
    body_pieces, chunk, close_payload, frame, new_key, read_head,
)
from runs import access
from runs.executors.base import ExecutorError
from runs.models import Run
from runs.ports import PortUnavailable, port_for_user, port_path

log = logging.getLogger(__name__)

PORT_PATH = re.compile(r"/runs/(?P<run_id>[0-9]{1,18})/ports/(?P<key>[^/]+)(?P<rest>/.*)?", re.DOTALL)
WEBSOCKET_ROUTE = r"^runs/(?P<run_id>[0-9]{1,18})/ports/(?P<key>[^/]+)/"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # one websocket message from an app to the browser

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade",
})
# Set here, from what the console knows; never what the browser claims.
FORWARDING = frozenset({
    b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-script-name", b"x-real-ip",
})
# An answer's headers that would bind the whole origin, the console's pages included.
ORIGIN_WIDE = frozenset({
    b"strict-transport-security", b"alt-svc", b"clear-site-data", b"service-worker-allowed", b"nel", b"report-to",
    b"reporting-endpoints", b"public-key-pins", b"public-key-pins-report-only", b"expect-ct", b"origin-agent-cluster",
})
WEBSOCKET_OWN = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
    b"sec-websocket-accept",
})
NOT_LISTENING_HINT = ("Is the app started, and listening on this port? It must listen inside the run: "
                      "127.0.0.1 or 0.0.0.0 both do.")


def console_cookies() -> set[str]:
    return {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, settings.LANGUAGE_COOKIE_NAME, "messages"}


def with_ports(django_app):
    """The console's HTTP application, with /runs/{id}/ports/... given to the port proxy."""
    proxy = AuthMiddlewareStack(serve_port)

    async def application(scope, receive, send):
        if PORT_PATH.fullmatch(scope["path"]):
            return await proxy(scope, receive, send)
        return await django_app(scope, receive, send)

    return application


# ------------------------------------------------------------------ what crosses, and how


def _header(scope, name: bytes) -> bytes:
    return next((value for key, value in scope.get("headers", []) if key.lower() == name), b"")


def allowed_host(scope) -> str | None:
    """The Host the browser asked for, if it is one of ALLOWED_HOSTS (Django's own check
    is not on this path)."""
    host = _header(scope, b"host").decode("latin-1")
    domain, _ = split_domain_port(host)
    return host if domain and validate_host(domain, settings.ALLOWED_HOSTS) else None


def _client_address(scope) -> str:
    hops = settings.RUNYARD_PROXY_COUNT  # as runs.throttle.client_ip reads it
    if hops:
        forwarded = [part.strip() for part in _header(scope, b"x-forwarded-for").decode("latin-1").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    client = scope.get("client") or ("", 0)
    return client[0] or ""


def _without_console_cookies(value: bytes) -> bytes:
    own = console_cookies()
    kept = [pair for pair in value.split(b";")
            if pair.strip() and pair.split(b"=", 1)[0].strip().decode("latin-1") not in own]
    return b";".join(kept).strip()


def request_headers(scope, host: str, prefix: str, *, websocket: bool = False) -> list[tuple[bytes, bytes]]:
    """What the browser sent that the app should see: not the hop-by-hop headers, not the
    console's cookies, and forwarding headers the console writes itself."""
    named = {token.strip().lower() for value in [_header(scope, b"connection")] for token in value.split(b",")}
    kept = []
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name in HOP_BY_HOP or name in named or name in FORWARDING or name in (b"content-length", b"expect"):
            continue
        if websocket and name in WEBSOCKET_OWN:
            continue
        if name == b"cookie":
            value = _without_console_cookies(value)
            if not value:
                continue
        kept.append((name, value))
    scheme = scope.get("scheme", "http")
    secure = scheme in ("https", "wss") or settings.RUNYARD_HTTPS
    kept += [
        (b"x-forwarded-for", _client_address(scope).encode("latin-1")),
        (b"x-forwarded-proto", b"https" if secure else b"http"),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-forwarded-prefix", prefix.rstrip("/").encode()),
        (b"x-script-name", prefix.rstrip("/").encode()),
    ]
    return kept


def request_target(scope) -> bytes:
    target = scope.get("raw_path") or quote(scope["path"]).encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    if any(byte in target for byte in b" \r\n\t\0"):
        raise ProtocolError("a request target with spaces or control characters")
    return target


def _cookie_for_app(value: bytes, prefix: str) -> bytes | None:
    """The app's Set-Cookie as the browser may keep it: never one of the console's cookies,
    never for a path off the app's address or for another host; None to drop it."""
    parts = [part.strip() for part in value.split(b";")]
    name = parts[0].split(b"=", 1)[0].strip().decode("latin-1")
    bare = name.removeprefix("__Host-").removeprefix("__Secure-")
    if name.startswith("__Host-") or bare in console_cookies():
        return None  # __Host- cookies are for the whole origin by definition
    kept = [parts[0]]
    for part in parts[1:]:
        attribute, _, setting = part.partition(b"=")
        attribute = attribute.strip().lower()
        if attribute == b"domain":
            continue
        if attribute == b"path":
            path = setting.strip().decode("latin-1")
            if not (path + "/").startswith(prefix):
                part = b"Path=" + prefix.encode()
        kept.append(part)
    return b"; ".join(kept)


def _private(value: bytes) -> bytes:
    directives = [part.strip() for part in value.split(b",") if part.strip()]
    directives = [d for d in directives if d.split(b"=")[0].lower() not in (b"public", b"s-maxage", b"proxy-revalidate")]
    if not any(d.lower() in (b"private", b"no-store") for d in directives):
        directives.append(b"private")
    return b", ".join(directives)


def _off_address(location: bytes, host: str, request_path: str, prefix: str) -> bool:
    """Does a redirect lead to this console's host outside the app's address? Read as a
    browser reads it: backslashes are slashes, %2e is a dot."""
    text = location.decode("latin-1").replace("\\", "/").replace("\t", "")
    target = urlsplit(urljoin(f"http://{host}{quote(request_path)}", text))
    if target.hostname is None or target.hostname != split_domain_port(host)[0].strip("[]").lower():
        return False  # another site: the browser goes there without the console's cookies
    path = re.sub("%2e", ".", target.path, flags=re.IGNORECASE)
    path = urlsplit(urljoin("http://x/", path)).path  # dot segments resolved
    return not (path + "/").startswith(prefix)


def app_policy(host: str, prefix: str) -> str:
    """The Content-Security-Policy of every answer from an app (see the module's docstring)."""
    own = " ".join(f"{scheme}://{host}{prefix}" for scheme in ("http", "https", "ws", "wss"))
    return "; ".join([
        "default-src * data: blob: 'unsafe-inline' 'unsafe-eval'",
        f"connect-src {own}",
        f"form-action {own}",
        f"frame-src {own}",
        f"child-src {own}",
        f"worker-src {own} blob:",
        f"manifest-src {own}",
        f"base-uri {own}",
        "object-src 'none'",
        "frame-ancestors 'self'",
        "sandbox allow-scripts allow-forms allow-same-origin allow-modals allow-downloads",
    ])


def response_headers(head, host: str, prefix: str, request_path: str) -> tuple[list[tuple[bytes, bytes]], str]:
    """The app's answer headers as the browser gets them, and "" or why the answer is refused."""
    named = {token.strip().lower() for value in head.values(b"connection") for token in value.split(b",")}
    headers, cached = [], False
    for name, value in head.headers:
        if name in HOP_BY_HOP or name in named or name in ORIGIN_WIDE:
            continue
        if name == b"set-cookie":
            value = _cookie_for_app(value, prefix)
            if value is None:
                log.info("dropped a cookie an app at %s set for the console's origin", prefix)
                continue
        elif name == b"cache-control":
            value, cached = _private(value), True
        elif name == b"location" and _off_address(value, host, request_path, prefix):
            return [], (f"The app answered with a redirect to {value.decode('latin-1')[:200]}, outside its address "
                        f"{prefix}: start it with that address as its base path.")
        headers.append((name, value))
    if not cached:
        headers.append((b"cache-control", b"private"))
    headers.append((b"content-security-policy", app_policy(host, prefix).encode()))
    return headers, ""


# ------------------------------------------------------------------ HTTP


async def _page(send, status: int, title: str, message: str, run_id: int | None = None, hint: str = "",
                extra: list | None = None) -> None:
    body = render_to_string("dashboard/port_unavailable.html",
                            {"title": title, "message": message, "hint": hint, "run_id": run_id}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", POLICY.encode()), (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), *(extra or []),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str) -> None:
    await send({"type": "http.response.start", "status": 302, "headers": [
        (b"location", location.encode("latin-1")), (b"content-length", b"0"), (b"cache-control", b"no-store"),
    ]})
    await send({"type": "http.response.body", "body": b""})


async def _refusal(send, exc: Exception, run_id: int) -> None:
    if isinstance(exc, Run.DoesNotExist):
        await _page(send, 404, "Not found", "There is no run with this number in your teams.",
                    hint="A run that belongs to another team looks exactly like one that does not exist.")
    elif isinstance(exc, access.NotAllowed):
        await _page(send, 403, "Not allowed", str(exc), run_id)
    else:
        title = "Run not running" if exc.status == 409 else "No such port"
        await _page(send, exc.status, title, str(exc), run_id)


async def serve_port(scope, receive, send):
    """One HTTP request to a run's port (the module's docstring says what crosses)."""
    route = PORT_PATH.fullmatch(scope["path"])
    run_id, key, rest = int(route["run_id"]), route["key"], route["rest"]
    host = allowed_host(scope)
    if host is None:
        return await _page(send, 400, "Bad request", "This console does not answer to that host name.")
    query = scope.get("query_string", b"").decode("latin-1")
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        asked = quote(scope["path"]) + (f"?{query}" if query else "")
        return await _redirect(send, f"{settings.LOGIN_URL}?{urlencode({'next': asked})}")
    try:
        run, port, executor = await database_sync_to_async(port_for_user)(user, run_id, key)
    except (Run.DoesNotExist, access.NotAllowed, PortUnavailable) as exc:
        return await _refusal(send, exc, run_id)
    prefix = port_path(run.pk, port["name"])
    if key != port["name"] or rest is None:  # its address is by name, with a final slash
        return await _redirect(send, prefix.rstrip("/") + quote(rest or "/") + (f"?{query}" if query else ""))
    where = f"port {port['name']} ({port['port']}) of run #{run.pk}"
    try:
        stream = await asyncio.to_thread(executor.open_port, run, port["port"])
    except ExecutorError as exc:
        return await _page(send, 502, "The app does not answer", f"{where}: {exc}", run.pk, NOT_LISTENING_HINT)
    upstream = AsyncPortStream(stream)
    try:
        await _exchange(scope, receive, send, upstream, host, prefix, where, run.pk)
    finally:
        await upstream.aclose()


async def _exchange(scope, receive, send, upstream: AsyncPortStream, host: str, prefix: str, where: str, run_id: int):
    method = scope["method"]
    try:
        target = request_target(scope)
    except ProtocolError as exc:
        return await _page(send, 400, "Bad request", str(exc), run_id)
    headers = request_headers(scope, host, prefix)
    body_mode = None
    if any(name == b"content-length" for name, _ in scope.get("headers", [])):
        body_mode = "length"
        headers.append((b"content-length", _header(scope, b"content-length")))
    elif any(name == b"transfer-encoding" for name, _ in scope.get("headers", [])):
        body_mode = "chunked"
        headers.append((b"transfer-encoding", b"chunked"))
    headers.append((b"connection", b"close"))  # one request per relay: the answer ends where the app closes
    head = b"%s %s HTTP/1.1\r\n" % (method.encode("latin-1"), target)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"

    async def forward_body():
        """The request body as it comes; then, while the answer streams, watch for the browser leaving."""
        try:
            await upstream.write(head)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return await upstream.aclose()
                data = message.get("body", b"")
                if data and body_mode:
                    await upstream.write(chunk(data) if body_mode == "chunked" else data)
                if not message.get("more_body", False):
                    break
            if body_mode == "chunked":
                await upstream.write(chunk(b""))
        except OSError:
            return  # the app closed the connection: what it answered is read all the same
        while (await receive())["type"] != "http.disconnect":
            pass
        await upstream.aclose()

    sending = asyncio.create_task(forward_body())
    try:
        try:
            answer = await read_head(upstream)
        except ProtocolError as exc:
            return await _page(send, 502, "The app's answer is not HTTP", f"{where}: {exc}", run_id)
        if answer is None:
            why = upstream.failure() or "it closed the connection without answering"
            return await _page(send, 502, "The app does not answer", f"{where}: {why}", run_id, NOT_LISTENING_HINT)
        try:
            length = body_length(answer, method)
        except ProtocolError as exc:
            return await _page(send, 502, "The app's answer is not HTTP", f"{where}: {exc}", run_id)
        headers, refused = response_headers(answer, host, prefix, scope["path"])
        if refused:
            return await _page(send, 502, "The app left its address", refused, run_id)
        if length == "chunked" or length is None:  # a length beside chunks is not the body's (RFC 9112 §6.3)
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        try:
            async for piece in body_pieces(upstream, length):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except ProtocolError as exc:
            log.info("%s: the answer to %s %s broke off: %s", where, method, scope["path"], exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        sending.cancel()


# ------------------------------------------------------------------ websockets


def _close_code(code) -> int:
    """A close code that may be passed on (Daphne sends only 1000 and 3000-4999), else 1000."""
    return code if isinstance(code, int) and (code == 1000 or 3000 <= code <= 4999) else 1000


def _still_reaches(user, run_id: int, key: str) -> int:
    """0 while the user may still use the port; else the close code that says why not."""
    try:
        port_for_user(access.current_user(user), run_id, key)
    except (Run.DoesNotExist, access.NotAllowed):
        return 4403
    except PortUnavailable:
        return 4409
    return 0


class PortConsumer(AsyncWebsocketConsumer):
    """A websocket to an app in a run: the browser's handshake is made again, as a client,
    to the app (same path, subprotocols, Origin; the console's cookies taken out), then
    messages are relayed both ways. The Origin is checked in dashboard/asgi.py; access
    when connecting, then every second, as for a terminal: a user who loses it has the
    socket closed with 4403, a run that stops running with 4409; the app's end of the
    connection is 4502 (the browser's side sees only 1000 or 3000-4999)."""

    upstream: AsyncPortStream | None = None

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        run_id, key = int(kwargs["run_id"]), kwargs["key"]
        user, host = self.scope.get("user"), allowed_host(self.scope)
        if host is None or user is None or not user.is_authenticated:
            return await self.close()
        try:
            run, port, executor = await database_sync_to_async(port_for_user)(user, run_id, key)
        except (Run.DoesNotExist, access.NotAllowed, PortUnavailable):
            return await self.close()  # before accepting: the browser is refused (403)
        prefix, where = port_path(run.pk, port["name"]), f"port {port['name']} of run #{run.pk}"
        try:
            stream = await asyncio.to_thread(executor.open_port, run, port["port"])
        except ExecutorError as exc:
            log.info("websocket to %s: %s", where, exc)
            return await self.close()
        self.upstream = AsyncPortStream(stream)
        try:
            subprotocol = await self._handshake(host, prefix)
        except (ProtocolError, OSError) as exc:
            log.info("websocket to %s refused: %s", where, exc)
            await self.upstream.aclose()
            return await self.close()
        await self.accept(subprotocol)
        self.where = where
        self.allowed = access.Recheck(lambda: _still_reaches(user, run_id, key))
        self.relay = asyncio.create_task(self._from_app())
        self.watch = asyncio.create_task(self._watch_access())

    async def _handshake(self, host: str, prefix: str) -> str | None:
        key = new_key()
        asked = self.scope.get("subprotocols") or []
        headers = request_headers(self.scope, host, prefix, websocket=True) + [
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-key", key.encode()),
            (b"sec-websocket-version", b"13"),
        ]
        if asked:
            headers.append((b"sec-websocket-protocol", ", ".join(asked).encode("latin-1")))
        head = b"GET %s HTTP/1.1\r\n" % request_target(self.scope)
        await self.upstream.write(head + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n")
        answer = await read_head(self.upstream, informational=True)
        if answer is None:
            raise ProtocolError(self.upstream.failure() or "the app closed the connection without answering")
        if answer.status != 101:
            raise ProtocolError(f"the app answered {answer.status} {answer.reason}, not 101 Switching Protocols")
        if (answer.get(b"upgrade") or b"").lower() != b"websocket" or answer.get(b"sec-websocket-accept") != accept_for(key):
            raise ProtocolError("the app's answer is not a websocket handshake")
        if answer.get(b"sec-websocket-extensions"):
            raise ProtocolError("the app chose an extension that was not offered")
        chosen = answer.get(b"sec-websocket-protocol")
        if chosen is None:
            return None
        if chosen.decode("latin-1") not in asked:
            raise ProtocolError("the app chose a subprotocol the browser did not ask for")
        return chosen.decode("latin-1")

    async def _from_app(self):
        messages = MessageReader(self.upstream, MAX_MESSAGE_BYTES)
        try:
            while True:
                message = await messages.next()
                if message is None:
                    return await self.close(code=4502)
                kind, payload = message
                if kind == TEXT:
                    await self.send(text_data=payload.decode("utf-8"))
                elif kind == BINARY:
                    await self.send(bytes_data=payload)
                elif kind == PING:
                    await self.upstream.write(frame(PONG, payload))
                elif kind == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                    return await self.close(code=_close_code(code))
        except (ProtocolError, UnicodeDecodeError, OSError) as exc:
            log.info("websocket to %s: %s", self.where, exc)
            await self.close(code=4502)

    async def _watch_access(self):
        while True:
            code = await self.allowed.value()
            if code:
                log.info("closing a websocket to %s: no longer allowed (%s)", self.where, code)
                return await self.close(code=code)
            await asyncio.sleep(access.RECHECK_SECONDS)

    async def receive(self, text_data=None, bytes_data=None):
        if self.upstream is None or await self.allowed.value():
            return
        message = frame(TEXT, text_data.encode()) if text_data is not None else frame(BINARY, bytes_data or b"")
        try:
            await self.upstream.write(message)
        except OSError:
            await self.close(code=4502)

    async def disconnect(self, code):
        for task in (getattr(self, "relay", None), getattr(self, "watch", None)):
            if task is not None:
                task.cancel()
        if self.upstream is None:
            return
        try:  # tell the app, as a browser would; an app that reads nothing more is not waited for
            sendable = isinstance(code, int) and (1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999)
            going = code if sendable else 1001  # 1005, 1006: the browser went without saying
            async with asyncio.timeout(5):  # not wait_for, which may drop a cancel (Python 3.11)
                await self.upstream.write(frame(CLOSE, close_payload(going)))
        except (OSError, TimeoutError):
            pass
        await self.upstream.aclose()
