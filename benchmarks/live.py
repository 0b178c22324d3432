"""Live rows.

create-to-running: `runs.services.create_run` (tasks in this process, as the
embedded default runs them) until its `running` reaches a watcher of the team's
runs (the status message an open runs list gets, sent once the change is
committed). Watching, not reading the database every 5 ms: on two cores those
reads took CPU from the engine while it started the container (about 30 ms of
its 300). Floor: a bare Docker SDK create + start of the same image running
`true` (what `docker run -d` does), until the engine has started it.

log-to-socket: a run prints 1,000 lines a second, each with its own print time (the
container shares the host's clock); a real Chromium (Playwright) has the run's Logs
tab open on a live Daphne (the embedded default: tasks and channel layer in its
process) and each line's arrival − print is taken where the frame reaches the
browser's socket (Chromium's own network events). p50/p99; beside it, the same in
the page's JavaScript and on a bare WebSocket client's socket. Floor: the same
lines, read at the same time by a bare Docker client following the container's log.

terminal-echo: a keystroke on the run's terminal socket until its echo comes back,
p50, spoken by a minimal WebSocket client with the signed-in page's session cookie
and Origin (Chromium's own WebSocket beside it, in the notes). Floor: an
interactive shell exec'd in the same container through the Docker SDK's socket,
one byte written until it comes back.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import IMAGE, Row, percentile

PYTHON_IMAGE = "runyard/python:3.11"
ROOT = Path(__file__).resolve().parent.parent


def measure(ctx) -> list[Row]:
    rows = [create_row(ctx)]
    with console(ctx) as (url, page):
        rows.append(log_socket_row(ctx, url, page))
        rows.append(echo_row(ctx, url, page))
    return rows


# ---------------------------------------------------------------- create → running

def create_row(ctx) -> Row:
    from runs.models import Run
    from runs.services import create_run

    repeats = max(5, ctx.sizes["repeats"] * 3)
    floors, ours = [], []
    docker_floor_start()  # warm: the first create of a process pays for its client
    with StatusWatch(ctx.team.pk) as watch:
        for attempt in range(repeats):
            floors.append(docker_floor_start())
            started = time.perf_counter()
            run = create_run(user=ctx.user, source={"name": "create-bench", "image": IMAGE, "run": [{"command": "true"}]},
                             executor="docker")
            watch.wait(run.pk, "running")
            ours.append(time.perf_counter() - started)
            if Run.objects.get(pk=run.pk).status not in ("running", "stopping", "completed"):
                raise RuntimeError(f"run {run.pk} was announced running but is not")
            wait_status(run.pk, "completed", timeout=60)
    floor, mine = statistics.median(floors), statistics.median(ours)
    print(f"    floor {[round(f, 3) for f in floors]}\n    ours  {[round(o, 3) for o in ours]}")
    return Row("create-to-running", f"median of {repeats}", floor, mine,
               "bare docker SDK create + start of `true`", max_ratio=1.3)


class StatusWatch:
    """The team's run status messages as a console's runs list gets them: this
    process's channel layer (in memory, the embedded default) on an event loop of
    its own, which the tasks in this process announce to."""

    def __init__(self, team_id: int):
        self.team_id = team_id

    def __enter__(self):
        import asyncio

        from channels.layers import get_channel_layer

        from runs.live import remember_server_loop, team_group

        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-status-watch", daemon=True)
        self.thread.start()
        self.channel = self._on_loop(self.layer.new_channel())
        self._on_loop(self.layer.group_add(team_group(self.team_id), self.channel))
        remember_server_loop(self.loop)
        return self

    def _on_loop(self, coroutine, timeout: float = 30):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait(self, run_id: int, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            message = self._on_loop(self.layer.receive(self.channel), max(0.1, deadline - time.monotonic()))
            if message.get("run") == run_id and message.get("to") == status:
                return
            if message.get("run") == run_id and message.get("to") in ("completed", "failed", "terminated"):
                raise RuntimeError(f"run {run_id} went {message['to']} before it was announced {status}")

    def __exit__(self, *exc):
        from runs.live import remember_server_loop

        remember_server_loop(None)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def docker_floor_start() -> float:
    import docker

    client = docker.from_env()
    try:
        started = time.perf_counter()
        container = client.containers.create(IMAGE, ["true"], network_mode="none")
        container.start()
        elapsed = time.perf_counter() - started
        container.wait()
        container.remove(force=True)
        return elapsed
    finally:
        client.close()


def wait_status(run_id: int, status: str, timeout: float = 30) -> None:
    from runs.models import Run

    deadline = time.monotonic() + timeout
    while True:
        now = Run.objects.filter(pk=run_id).values_list("status", flat=True).first()
        if now == status:
            return
        if now in ("completed", "failed", "terminated") and status == "running":
            raise RuntimeError(f"run {run_id} went {now} before it was seen running")
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is {now}, not {status}, after {timeout} s")
        time.sleep(0.005)


# ---------------------------------------------------------------- a live console

@contextmanager
def console(ctx):
    """A Daphne serving this bench's database (tasks in its process, as `make run`
    does), and a signed-in Chromium page on it."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the bench's own ORM
    # calls between its steps are plain blocking calls all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    user = ctx.user
    user.set_password("pw-bench")
    user.save()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL",)}
    env["RUNYARD_TASKS_IN_PROCESS"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    if ctx.database == "postgresql":  # the bench's own database (its test_ copy), not the one named in the URL
        from django.db import connection

        base, _, _ = os.environ["DATABASE_URL"].rpartition("/")
        env["DATABASE_URL"] = f"{base}/{connection.settings_dict['NAME']}"
    log_path = Path(ctx.settings.VAR_DIR) / "bench" / "daphne.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/v1/health", timeout=2)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the console did not start: " + log_path.read_text()[-3000:]) from None
                time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"],
            )
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=url)
                page = context.new_page()
                page.set_default_timeout(30000)
                page.add_init_script(RECORD_SOCKETS)
                page.goto(url + "/accounts/login/")
                page.get_by_label("Username").fill(user.username)
                page.get_by_label("Password").fill("pw-bench")
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(url + "/")
                yield url, page
            finally:
                browser.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


# Every message on the page's log sockets, with the wall-clock time it arrived.
RECORD_SOCKETS = """
(() => {
  window.__logArrivals = [];
  const Native = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    if (String(url).includes("/logs/")) {
      ws.addEventListener("message", (event) => {
        window.__logArrivals.push([performance.timeOrigin + performance.now(), event.data]);
      });
    }
    return ws;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();
"""


def api_create(url: str, token: str, source: dict) -> int:
    request = urllib.request.Request(url + "/api/v1/runs", data=json.dumps(source).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["id"]


def _token(ctx) -> str:
    from runs.models import ApiToken

    return ApiToken.issue(ctx.user, name="bench")[1]


# ---------------------------------------------------------------- log line → socket

PRINTER = """
import sys, time
n = int(sys.argv[1])
start = time.time() + 0.5
for i in range(n):
    due = start + i / 1000
    wait = due - time.time()
    if wait > 0:
        time.sleep(wait)
    sys.stdout.write(f"bench-line {i} {time.time():.6f}\\n")
    sys.stdout.flush()
"""


def log_socket_row(ctx, url: str, page) -> Row:
    lines = ctx.sizes["socket_lines"]
    token = _token(ctx)
    # The page opens first, on a run that waits: the tab is open before the first line.
    command = f"sleep 3; python3 -c '{PRINTER}' {lines}"
    run_id = api_create(url, token, {"name": "socket-bench", "image": PYTHON_IMAGE, "run": [{"command": command}]})
    # When each frame reaches the browser's socket: Chromium's own network events
    # (their monotonic stamps, set to the wall clock by the handshake's wallTime).
    cdp = page.context.new_cdp_session(page)
    sockets, frames, clock = set(), [], {}
    cdp.on("Network.webSocketCreated",
           lambda event: sockets.add(event["requestId"]) if "/logs/" in event["url"] else None)
    cdp.on("Network.webSocketWillSendHandshakeRequest",
           lambda event: clock.setdefault("offset", event["wallTime"] - event["timestamp"]))
    cdp.on("Network.webSocketFrameReceived",
           lambda event: frames.append((event["requestId"], event["timestamp"], event["response"]["payloadData"])))
    cdp.send("Network.enable")
    page.goto(f"{url}/runs/{run_id}/logs/")
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    bare_socket: list = []
    listener = threading.Thread(target=listen_bare, args=(url, run_id, cookies, bare_socket), daemon=True)
    listener.start()
    page.evaluate("() => { window.__logArrivals = window.__logArrivals.slice(0, 0); }")
    floor_seen: list[float] = []
    follower = threading.Thread(target=follow_bare, args=(ctx, run_id, floor_seen), daemon=True)
    follower.start()
    deadline = time.monotonic() + lines / 1000 + 90
    wait_status(run_id, "completed", timeout=lines / 1000 + 90)
    ours: list[float] = []
    in_page: list[float] = []
    while time.monotonic() < deadline:
        in_page = arrivals(page.evaluate("() => window.__logArrivals"))
        ours = arrivals([((stamp + clock.get("offset", 0)) * 1000, data)
                         for request, stamp, data in frames if request in sockets])
        if len(ours) >= lines and len(in_page) >= lines:
            break
        page.wait_for_timeout(200)
    cdp.detach()
    follower.join(30)
    listener.join(30)
    beside = arrivals(bare_socket)
    if len(ours) < lines or len(floor_seen) < lines:
        raise RuntimeError(f"lines seen: socket {len(ours)}, page {len(in_page)}, bare client {len(floor_seen)}, of {lines}")
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    f50, f99 = percentile(floor_seen, 50), percentile(floor_seen, 99)
    return Row("log-to-socket p99", f"{lines:,} lines at 1,000/s", f99, p99,
               "a bare Docker client following the container's log, p99", max_seconds=0.25,
               notes=[f"p50 {p50 * 1000:.0f} ms (floor p50 {f50 * 1000:.1f} ms), max {max(ours) * 1000:.0f} ms; "
                      f"in the page's JavaScript (its message event) p50 {percentile(in_page, 50) * 1000:.0f} ms, "
                      f"p99 {percentile(in_page, 99) * 1000:.0f} ms; on a bare WebSocket client's socket "
                      f"p50 {percentile(beside, 50) * 1000:.0f} ms, p99 {percentile(beside, 99) * 1000:.0f} ms"])


def listen_bare(url: str, run_id: int, cookies: str, out: list) -> None:
    """The run's log socket, as the page opens it, read by a minimal client: (arrival ms, text) a message."""
    host, port = url.removeprefix("http://").split(":")
    ws = MiniSocket(host, int(port), f"/ws/runs/{run_id}/logs/?after=0", {"Cookie": cookies, "Origin": url})
    ws.sock.settimeout(120)
    try:
        while True:
            opcode, data = ws.message()
            if opcode == 8:
                return
            if opcode == 1:
                out.append((time.time() * 1000, data.decode()))
                if b'"end"' in data[:20]:
                    return
    except (OSError, RuntimeError):
        return
    finally:
        ws.close()


def arrivals(messages) -> list[float]:
    """arrival − print of every bench line in the recorded socket messages, seconds."""
    out = []
    for at_ms, data in messages:
        if not isinstance(data, str) or '"lines"' not in data:
            continue
        for line in json.loads(data).get("lines", []):
            parts = line.get("text", "").split()
            if len(parts) == 3 and parts[0] == "bench-line":
                out.append(at_ms / 1000 - float(parts[2]))
    return out


def follow_bare(ctx, run_id: int, seen: list[float]) -> None:
    import docker

    from runs.models import Run

    client = docker.from_env()
    try:
        deadline = time.monotonic() + 60
        container = None
        while container is None and time.monotonic() < deadline:
            container_id = Run.objects.filter(pk=run_id).values_list("container_id", flat=True).first()
            if container_id:
                container = client.containers.get(container_id)
            else:
                time.sleep(0.05)
        pending = b""
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            now = time.time()
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"bench-line":
                    seen.append(now - float(parts[2]))
    finally:
        client.close()


# ---------------------------------------------------------------- terminal echo

ECHO_IN_PAGE = """
async ([runId, count]) => {
  const ws = new WebSocket(`ws://${location.host}/ws/runs/${runId}/terminal/?mode=shell&cols=80&rows=24`);
  ws.binaryType = "arraybuffer";
  let waiting = null, buffer = "", lastOutput = performance.now();
  const decoder = new TextDecoder();
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "error") buffer += "[error " + message.detail + "]";
      return;
    }
    lastOutput = performance.now();
    buffer += decoder.decode(event.data);
    if (waiting && buffer.includes(waiting.char)) {
      const done = waiting; waiting = null; buffer = ""; done.resolve(performance.now());
    }
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  while (performance.now() - lastOutput < 500) await new Promise((r) => setTimeout(r, 100));
  const times = [];
  const letters = "abcdefghijklmnopqrstuvwxyz";
  for (let i = 0; i < count; i++) {
    const char = letters[i % 26];
    buffer = "";
    const echoed = new Promise((resolve) => { waiting = {char, resolve}; });
    const sent = performance.now();
    ws.send(new TextEncoder().encode(char));
    times.push((await echoed) - sent);
    await new Promise((r) => setTimeout(r, 20));
  }
  ws.send(JSON.stringify({type: "close"}));
  ws.close();
  return times;
}
"""


def echo_row(ctx, url: str, page) -> Row:
    count = ctx.sizes["echoes"]
    token = _token(ctx)
    run_id = api_create(url, token, {"name": "echo-bench", "image": IMAGE, "run": [{"command": "sleep 600"}]})
    wait_status(run_id, "running")
    try:
        page.goto(f"{url}/runs/{run_id}/")
        cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
        floor = raw_echoes(run_id, count)
        ours = socket_echoes(url, run_id, cookies, count)
        in_browser = [ms / 1000 for ms in page.evaluate(ECHO_IN_PAGE, [run_id, count])]
    finally:
        request = urllib.request.Request(f"{url}/api/v1/runs/{run_id}/terminate", method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(request, timeout=30).close()
    f50, p50 = statistics.median(floor), statistics.median(ours)
    return Row("terminal-echo p50", f"{count} keystrokes", f50, p50,
               "a shell exec'd through the Docker SDK's socket, p50", max_ratio=2.0,
               notes=[f"through the terminal socket with the page's cookie and Origin; p99 {percentile(ours, 99) * 1000:.1f} ms "
                      f"(floor p99 {percentile(floor, 99) * 1000:.1f} ms); from Chromium's own WebSocket "
                      f"p50 {statistics.median(in_browser) * 1000:.1f} ms"])


def socket_echoes(url: str, run_id: int, cookies: str, count: int) -> list[float]:
    """The terminal socket as the page opens it (session cookie, Origin), spoken by a
    minimal WebSocket client: one byte a keystroke until it comes back."""
    host, port = url.removeprefix("http://").split(":")
    ws = MiniSocket(host, int(port), f"/ws/runs/{run_id}/terminal/?mode=shell&cols=80&rows=24",
                    {"Cookie": cookies, "Origin": url})
    try:
        ws.drain(quiet=0.5)
        times = []
        for i in range(count):
            char = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
            started = time.perf_counter()
            ws.send(char, binary=True)
            got = b""
            while char not in got:
                got += ws.recv_binary()
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
        ws.send(json.dumps({"type": "close"}).encode(), binary=False)
        return times
    finally:
        ws.close()


class MiniSocket:
    """Just enough of RFC 6455 for the bench: a client's masked frames out, the server's frames in."""

    def __init__(self, host: str, port: int, path: str, headers: dict):
        import base64

        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"the terminal socket refused: {head[:200]!r}")

    def send(self, data: bytes, *, binary: bool) -> None:
        mask = os.urandom(4)
        header = bytes([0x82 if binary else 0x81])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        else:
            header += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            more = self.sock.recv(65536)
            if not more:
                raise RuntimeError("the terminal socket closed")
            self.buffer += more
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def message(self) -> tuple[int, bytes]:
        """A whole message (its fragments joined): (opcode, payload)."""
        opcode, data, final = self.frame(with_fin=True)
        while not final:
            _, more, final = self.frame(with_fin=True)
            data += more
        return opcode, data

    def frame(self, with_fin: bool = False):
        first, second = self._exactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(self._exactly(8), "big")
        payload = self._exactly(size)
        return (first & 0x0F, payload, bool(first & 0x80)) if with_fin else (first & 0x0F, payload)

    def recv_binary(self) -> bytes:
        while True:
            opcode, data = self.frame()
            if opcode == 2:
                return data
            if opcode == 8:
                raise RuntimeError(f"the terminal socket closed: {data!r}")
            if opcode == 1 and b'"error"' in data:
                raise RuntimeError(f"the terminal said: {data!r}")

    def drain(self, quiet: float) -> None:
        """Read until nothing has come for `quiet` seconds (the prompt, the session message)."""
        self.sock.settimeout(quiet)
        try:
            while True:
                self.frame()
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()


def raw_echoes(run_id: int, count: int) -> list[float]:
    import docker

    from runs.executors.base import SHELL_COMMAND
    from runs.models import Run

    client = docker.from_env()
    try:
        container_id = Run.objects.get(pk=run_id).container_id
        exec_id = client.api.exec_create(container_id, SHELL_COMMAND, stdin=True, tty=True)["Id"]
        sock = client.api.exec_start(exec_id, tty=True, socket=True)
        raw = getattr(sock, "_sock", sock)
        raw.settimeout(10)
        time.sleep(0.5)
        raw.setblocking(False)
        try:
            while raw.recv(65536):
                pass
        except BlockingIOError:
            pass
        raw.setblocking(True)
        raw.settimeout(10)
        times = []
        for i in range(count):
            char = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
            started = time.perf_counter()
            raw.sendall(char)
            got = b""
            while char not in got:
                got += raw.recv(65536)
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
        raw.sendall(b"\x03exit\r")
        raw.close()
        return times
    finally:
        client.close()
