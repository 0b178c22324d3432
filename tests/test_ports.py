"""A run's ports (SPEC §8): a small HTTP and websocket app inside a real run, served
through the real console (Daphne) to the run's team and to no one else, while the run
itself still reaches nothing outside it."""

import fcntl
import hashlib
import http.client
import json
import os
import socket
import struct
import threading
from pathlib import Path

import pytest
import yaml

from runs.executors import executor_for
from runs.executors.base import ExecutorError
from runs.executors.static_relay import is_static_program
from runs.models import Run
from runs.ports import PortUnavailable, port_for_user
from runs.services import create_run, terminate_run
from runs.spec import SpecError
from tests.conftest import BUSYBOX, SCREENSHOTS, wait_for, wait_until
from tests.test_live import session_cookie
from tests.test_pages import expect_text
from tests.websocket_client import WebSocket

APP = (Path(__file__).parent / "port_app.py").read_text()
PYTHON = "runyard/python:3.11"


def app_spec(port: int = 8000, image: str = PYTHON, **extra) -> str:
    command = (f"cat > \"${{TMPDIR:-/tmp}}/port-app-$RUNYARD_RUN_ID.py\" <<'RUNYARD_APP'\n{APP}\nRUNYARD_APP\n"
               f"PORT={port} python3 \"${{TMPDIR:-/tmp}}/port-app-$RUNYARD_RUN_ID.py\"")
    body = {"name": "port-app", "image": image, "run": [{"command": command}],
            "ports": [{"name": "web", "type": "http", "port": port}], "termination_grace": "1s", **extra}
    return yaml.safe_dump(body)


def serving(user, executor: str = "docker", port: int = 8000) -> Run:
    """A running run whose app answers through the console (its first request may come
    before the app listens: the console then says nothing answers yet)."""
    run = create_run(user=user, source=app_spec(port), executor=executor)
    return wait_for(run.pk, "running")


class Console:
    """Plain HTTP to the live console, as one user (or none), following no redirect."""

    def __init__(self, console_url: str, user=None):
        self.address = console_url.removeprefix("http://")
        self.cookie = session_cookie(user).decode() if user is not None else ""

    def request(self, method: str, path: str, body=None, headers=None):
        connection = http.client.HTTPConnection(self.address, timeout=30)
        sent = {"Cookie": f"{self.cookie}; csrftoken=console-csrf; theirs=app-cookie" if self.cookie else "theirs=app-cookie",
                **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        answer = connection.getresponse()
        answer.body = answer.read()
        connection.close()
        return answer

    def get(self, path: str, **headers):
        return self.request("GET", path, headers=headers)

    def until_served(self, path: str):
        """GET once the app has started listening."""
        return wait_until(lambda: (a := self.get(path)).status != 502 and a, 30, f"the app at {path} answering")


def test_a_member_reaches_the_app_and_its_websocket_through_the_console(alice, bob, console_url, docker_engine, engine):
    run = serving(alice)
    prefix = f"/runs/{run.pk}/ports/web/"
    member = Console(console_url, bob)  # a teammate, not the owner

    page = member.until_served(prefix)
    assert page.status == 200, page.body
    assert f"Hello from run {run.pk}".encode() in page.body
    policy = page.getheader("Content-Security-Policy")
    assert f"connect-src http://{member.address}{prefix}" in policy and "sandbox" in policy

    # What the app receives: not the console's cookies, its own; where it is served.
    seen = json.loads(member.get(prefix + "headers?x=1").body)
    assert "sessionid" not in seen.get("cookie", "") and "csrftoken" not in seen.get("cookie", "")
    assert seen["cookie"] == "theirs=app-cookie"
    assert seen["x-forwarded-prefix"] == prefix.rstrip("/") and seen["path"] == prefix + "headers?x=1"
    assert seen["host"] == member.address

    # Bodies both ways: an upload with a length, one chunked, an answer in chunks.
    blob = os.urandom(3 * 1024 * 1024 + 17)
    uploaded = json.loads(member.request("POST", prefix + "upload", body=blob).body)
    assert uploaded == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "method": "POST"}
    pieces = (piece for piece in [b"first ", b"second ", b"third"])
    uploaded = json.loads(member.request("PUT", prefix + "upload", body=pieces).body)  # no length: sent chunked
    assert uploaded == {"size": 18, "sha256": hashlib.sha256(b"first second third").hexdigest(), "method": "PUT"}
    assert member.get(prefix + "stream").body == b"".join(f"piece {n}\n".encode() for n in range(5))

    # The app cannot set the console's cookies, cookies for the whole site, or headers for the whole origin.
    answer = member.get(prefix + "cookies")
    cookies = answer.headers.get_all("Set-Cookie")
    assert cookies == [f"app=kept; Path={prefix}", f"wide=1; Path={prefix}"]
    assert answer.getheader("Strict-Transport-Security") is None and answer.getheader("Cache-Control") == "max-age=600, private"
    # ... nor send the browser off its address to the console's own pages.
    away = member.get(prefix + "away")
    assert away.status == 502 and b"outside its address" in away.body and away.getheader("Location") is None

    # By number: the same app, at its address by name.
    by_number = member.get(f"/runs/{run.pk}/ports/8000/headers")
    assert by_number.status == 302 and by_number.getheader("Location") == prefix + "headers"
    assert member.get(f"/runs/{run.pk}/ports/web").getheader("Location") == prefix

    # The websocket, through the console: text and binary echoed, a ping from the app answered.
    socket_ = WebSocket(console_url, prefix + "echo", member.cookie, protocols="chat, other")
    assert socket_.status == 101 and socket_.headers["sec-websocket-protocol"] == "other"
    socket_.send(0x1, "héllo".encode())
    assert socket_.receive() == (0x1, "echo: héllo".encode())
    socket_.send(0x2, bytes(range(256)) * 300)
    assert socket_.receive() == (0x2, bytes(range(256)) * 300)
    socket_.send(0x1, b"ping me")  # the app pings the console, which answers it: the echo follows
    assert socket_.receive() == (0x1, b"echo: ping me")
    socket_.send(0x8, struct.pack("!H", 1000))
    assert socket_.receive()[0] == 0x8
    socket_.close()

    # Another site's page cannot open it, even with the member's cookie.
    foreign = WebSocket(console_url, prefix + "echo", member.cookie, "http://evil.example")
    assert foreign.status == 403
    foreign.close()
    terminate_run(run, actor=alice)


def test_only_the_runs_team_reaches_its_ports(alice, bob, charlie, viola, console_url, docker_engine, engine):
    run = serving(alice)
    prefix = f"/runs/{run.pk}/ports/web/"
    Console(console_url, bob).until_served(prefix)

    outsider = Console(console_url, charlie).get(prefix)
    assert outsider.status == 404 and b"There is no run with this number in your teams" in outsider.body
    assert b"Hello from run" not in outsider.body
    assert Console(console_url, charlie).get(f"/runs/{run.pk + 1000}/ports/web/").status == 404  # the same as none
    viewer = Console(console_url, viola).get(prefix)
    assert viewer.status == 403 and b"Viewers cannot reach the apps a run serves" in viewer.body
    signed_out = Console(console_url).get(prefix + "headers?a=b")
    assert signed_out.status == 302 and signed_out.getheader("Location").startswith("/accounts/login/?next=")
    undeclared = Console(console_url, bob).get(f"/runs/{run.pk}/ports/admin/")
    assert undeclared.status == 404 and b"it declares web (8000, http)" in undeclared.body

    for who, expected in ((charlie, 403), (viola, 403), (None, 403)):
        refused = WebSocket(console_url, prefix + "echo", session_cookie(who) if who else "")
        assert refused.status == expected
        refused.close()

    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated")
    ended = Console(console_url, bob).get(prefix)
    assert ended.status == 409 and f"Run #{run.pk} is terminated".encode() in ended.body


def _addresses_of_this_machine() -> list[str]:
    """Every IPv4 address of this machine's interfaces (SIOCGIFADDR on each)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            found.append(socket.inet_ntoa(packed[20:24]))
    return found


def test_from_inside_the_run_no_address_outside_it_answers(alice, console_url, docker_engine, engine):
    """The console reaches the app, but the run still reaches nothing: a listener on every
    address of this machine, and the console itself, answer this test and not the run."""
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    threading.Thread(target=lambda: [_accept_one(listener) for _ in iter(stop.is_set, True)], daemon=True).start()
    port = listener.getsockname()[1]
    console_port = int(console_url.rsplit(":", 1)[1])
    targets = [f"{address}:{port}" for address in _addresses_of_this_machine()] + [f"127.0.0.1:{console_port}"]
    for target in targets:  # each answers from here
        host, _, number = target.rpartition(":")
        socket.create_connection((host, int(number)), timeout=3).close()

    run = serving(alice)
    member = Console(console_url, alice)
    answer = member.until_served(f"/runs/{run.pk}/ports/web/probe?to={','.join(targets)}")
    results = json.loads(answer.body)
    assert set(results) == set(targets)
    assert all(result.startswith("failed") for result in results.values()), results
    stop.set()
    listener.close()
    terminate_run(run, actor=alice)


def _accept_one(listener):
    try:
        listener.accept()[0].close()
    except OSError:
        pass


def test_the_run_page_links_its_ports_and_the_app_works_in_the_browser(browser, alice, docker_engine):
    run = serving(alice)
    page = browser.page
    browser.goto(f"/runs/{run.pk}/")
    link = page.get_by_role("link", name="web")
    link.wait_for()
    assert link.get_attribute("href") == f"/runs/{run.pk}/ports/web/"
    assert link.get_attribute("rel") == "noopener"  # its own tab, which cannot reach back into this one
    browser.screenshot("run-ports-link")  # the page, not the header: the header may be re-read meanwhile
    Console(browser.base_url, alice).until_served(f"/runs/{run.pk}/ports/web/")
    with page.context.expect_page() as opened:
        link.click()
    app = opened.value
    app.wait_for_url(f"**/runs/{run.pk}/ports/web/")
    expect_text(app, "#echo", "^echo: echo: hello through the console$")
    # The app's page may not use the console's API with the member's session.
    expect_text(app, "#console-api", "^blocked$")
    app.screenshot(path=str(SCREENSHOTS / "run-ports-app.png"), full_page=True)
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated")
    page.reload()
    page.get_by_text("Ports: web").wait_for()
    assert page.get_by_role("link", name="web").count() == 0  # named, not linked, once it has stopped
    stopped = browser.goto(f"/runs/{run.pk}/ports/web/")
    assert stopped.status == 409
    expect_text(page, "#port-problem", f"^Run #{run.pk} is terminated: its ports are served only while it runs$")
    browser.screenshot("run-ports-stopped")


def test_a_local_run_serves_its_port_too(alice, console_url, engine):
    with socket.socket() as probe:  # a free port of this machine: a local run shares its network
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = serving(alice, "local", port)
    member = Console(console_url, alice)
    answer = member.until_served(f"/runs/{run.pk}/ports/web/")
    assert answer.status == 200 and f"Hello from run {run.pk}".encode() in answer.body
    socket_ = WebSocket(console_url, f"/runs/{run.pk}/ports/web/echo", member.cookie)
    socket_.send(0x1, b"local")
    assert socket_.receive() == (0x1, b"echo: local")
    socket_.close()
    terminate_run(run, actor=alice)


def test_nothing_listening_is_said_so(alice, console_url, docker_engine, engine):
    run = create_run(user=alice, source=yaml.safe_dump({
        "name": "quiet", "image": PYTHON, "run": [{"command": "sleep 60"}], "ports": [8000], "termination_grace": "1s",
    }), executor="docker")
    wait_for(run.pk, "running")
    answer = Console(console_url, alice).get(f"/runs/{run.pk}/ports/8000/")
    assert answer.status == 502 and b"Connection refused" in answer.body and b"listening on this port" in answer.body
    terminate_run(run, actor=alice)


def test_tcp_ports_are_refused_at_creation_unless_accepted(alice, settings):
    spec = yaml.safe_dump({"name": "ssh", "image": PYTHON, "run": [{"command": "true"}],
                           "ports": [{"name": "web", "type": "http", "port": 8000}, {"name": "ssh", "type": "tcp", "port": 22}]})
    with pytest.raises(SpecError) as refused:
        create_run(user=alice, source=spec, executor="docker")
    assert [error["loc"] for error in refused.value.errors] == ["ports[1].type"]
    assert "tcp port ssh (22) cannot be reached through this console" in refused.value.errors[0]["msg"]
    assert not Run.objects.exists()
    settings.RUNYARD_TCP_PORTS = "accept"
    run = create_run(user=alice, source=spec, executor="docker")
    assert run.spec["ports"][1] == {"name": "ssh", "type": "tcp", "port": 22}


def test_a_spec_frozen_before_ports_has_none(alice, client):
    run = create_run(user=alice, source=yaml.safe_dump({"name": "old", "image": PYTHON, "run": [{"command": "true"}]}),
                     executor="docker")
    run.spec.pop("ports")  # as stored before ports existed
    run.save(update_fields=["spec"])
    with pytest.raises(PortUnavailable) as missing:
        port_for_user(alice, run.pk, "8000")
    assert missing.value.status == 404 and str(missing.value) == f"run #{run.pk} has no port '8000': it declares no ports"
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/")
    assert page.status_code == 200 and b"Ports:" not in page.content


def test_the_relay_must_be_a_static_busybox(alice, settings, docker_engine, engine):
    assert is_static_program(Path("/bin/busybox").read_bytes())
    assert not is_static_program(Path("/bin/sh").resolve().read_bytes())  # dash, linked to the C library
    run = wait_for(create_run(user=alice, source=yaml.safe_dump({
        "name": "quiet", "image": BUSYBOX, "run": [{"command": "sleep 60"}], "ports": [8000], "termination_grace": "0s",
    }), executor="docker").pk, "running")
    settings.RUNYARD_PORT_RELAY = "/bin/sh"
    with pytest.raises(ExecutorError, match=r"ports need a statically linked BusyBox: /bin/sh \(RUNYARD_PORT_RELAY\)"):
        executor_for(run).open_port(run, 8000)
    settings.RUNYARD_PORT_RELAY = "/nowhere/busybox"
    with pytest.raises(ExecutorError, match="install busybox-static"):
        executor_for(run).open_port(run, 8000)
    terminate_run(run, actor=alice)
