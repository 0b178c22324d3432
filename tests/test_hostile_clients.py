"""A hostile signed-in client (issue 7, bullet 5): whatever it sends to the JSON API
and the websockets, it gets a 4xx naming the problem, an error message or a normal
close, never a 500 or a crashed consumer; its shells are capped in number and end
when their keep time passes, their run ends or the server stops.

The API tables hold the cases a fuzz loop over every endpoint found (and the holes
the issue reports); each row is a body or parameters a client could send.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, RequestFactory

from dashboard.asgi import application
from dashboard.port_streams import BINARY
from runs import api as runs_api
from runs.executors import get_executor
from runs.models import Run, TeamSecret
from runs.services import terminate_run
from terminal import sessions
from tests.conftest import BUSYBOX, in_thread, wait_for
from tests.test_api import assert_error, complete, launch, signed_in_with_csrf, spec
from tests.test_engine import launch as launch_run
from tests.test_live import ORIGIN, collect, session_cookie
from tests.test_terminal import Conversation, running
from tests.websocket_client import WebSocket


@pytest.fixture(params=["docker", "local"])
def executor(request, engine):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return request.param


def spec_json(**extra) -> str:
    return json.dumps(spec("hostile", **extra))


def deep_json(depth: int) -> str:
    return '{"name": "x", "image": "y", "run": ' + "[" * depth + "]" * depth + "}"


# "Billion laughs": nine lines that PyYAML builds cheaply (each alias is one shared
# object) but that expand to 9**9 strings once stored or serialized.
ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{before}'] * 9)}]\n" for before, name in zip("abcdefgh", "bcdefghi")
)
LONG_COMMAND = "x" * 100_000


# ---------------------------------------------------------------- bodies on create


@pytest.mark.parametrize(
    "body, content_type, says",
    [
        (deep_json(100_000), "application/json", "nested too deeply"),
        (deep_json(33), "application/json", "nested too deeply"),
        ('{"a":' * 40_000 + "1" + "}" * 40_000, "application/json", "nested too deeply"),
        ("[" * 200_000, "application/json", "nested too deeply"),
        (spec_json(termination_grace=1e308).replace("1e+308", "1e999"), "application/json", "not valid JSON"),
        (spec_json().replace('"hostile"', "NaN"), "application/json", "not valid JSON"),
        (spec_json().replace('"hostile"', "-Infinity"), "application/json", "not valid JSON"),
        (spec_json().replace('"hostile"', "1" * 5000), "application/json", "not valid JSON"),
        (spec_json(description="a\x00b"), "application/json", "cannot be stored"),
        (spec_json().replace('"hostile"', '"\\ud800"'), "application/json", "cannot be stored"),
        (b'{"name": "\xff"}', "application/json", "not valid JSON"),
        (json.dumps({**spec("big"), "description": "x" * 300_000}), "application/json", "larger than 256 KiB"),
        ("a: " + "[" * 5_000 + "]" * 5_000, "application/yaml", "the run spec is not valid"),
        ("".join("  " * i + f"k{i}:\n" for i in range(100)), "application/yaml", "the run spec is not valid"),
        (ALIAS_BOMB + f"name: x\nimage: {BUSYBOX}\nrun: [{{command: hi}}]\n", "application/yaml", "the run spec is not valid"),
        (ALIAS_BOMB.replace("i: &i", "env: {A: *h}\ni: &i"), "application/yaml", "the run spec is not valid"),
        (f"name: x\nimage: {BUSYBOX}\nrun: [{{command: &c {LONG_COMMAND}}}" + ", {command: *c}" * 20 + "]\n",
         "application/yaml", "the run spec is not valid"),
        ("a: &a [*a]\n", "application/yaml", "the run spec is not valid"),
        (f'name: "a\\0b"\nimage: {BUSYBOX}\nrun: [{{command: hi}}]\n', "application/yaml", "the run spec is not valid"),
        (f'name: x\nimage: {BUSYBOX}\nrun: [{{command: "\\ud800"}}]\n', "application/yaml", "the run spec is not valid"),
        (f'name: x\nimage: {BUSYBOX}\nexport: {{"/o\\0/": volume://x}}\nrun: [{{command: hi}}]\n', "application/yaml",
         "the run spec is not valid"),
        ("<run/>", "application/xml", "application/yaml or application/json"),
    ],
    ids=["json-100000-deep", "json-33-deep", "json-objects-deep", "json-unclosed-deep", "json-1e999", "json-nan",
         "json-infinity", "json-5000-digits", "json-nul", "json-lone-surrogate", "json-not-utf8", "json-over-256k",
         "yaml-flow-deep", "yaml-block-deep", "yaml-alias-bomb", "yaml-alias-bomb-in-env", "yaml-long-string-aliases",
         "yaml-self-alias", "yaml-nul", "yaml-lone-surrogate", "yaml-nul-in-a-path", "xml"],
)
def test_it_refuses_a_hostile_spec_naming_the_problem(api, body, content_type, says):
    response = api.client.post("/api/v1/runs", body, content_type=content_type, headers=api.headers)
    error = assert_error(response, 415 if content_type == "application/xml" else 400)
    assert says in error["detail"]
    assert content_type == "application/xml" or error["errors"] and all(e["msg"] for e in error["errors"])
    assert not Run.objects.exists()


def test_it_says_which_yaml_limit_a_spec_broke(api):
    deep = assert_error(api.post("/runs", "a: " + "[" * 5_000 + "]" * 5_000), 400)
    assert deep["errors"] == [{"loc": "", "msg": "invalid YAML: nested deeper than 32 levels at line 1"}]
    bomb = assert_error(api.post("/runs", ALIAS_BOMB + "name: x\n"), 400)
    assert bomb["errors"] == [{"loc": "", "msg": "invalid YAML: its aliases expand it beyond 1024 KiB"}]
    nul = assert_error(api.post("/runs", f'name: "a\\0b"\nimage: {BUSYBOX}\nrun: [{{command: hi}}]\n'), 400)
    assert nul["errors"] == [{"loc": "name", "msg": "must not contain NUL (\\0) or an unpaired surrogate"}]


def test_it_still_takes_anchors_aliases_and_merges_within_bounds(api):
    anchored = (f"name: &n merged\ndescription: *n\nimage: {BUSYBOX}\n"
                "run: [&step {command: echo hi}, {<<: *step, workdir: /tmp}]\n")
    response = api.post("/runs", anchored)
    assert response.status_code == 201, response.content
    assert response.json()["description"] == "merged"
    assert response.json()["spec"]["run"] == [{"command": "echo hi", "workdir": None}, {"command": "echo hi", "workdir": "/tmp"}]
    assert api.post("/runs", spec_json(env={"A": {"secret": "S"}}), content_type="application/json").status_code == 400  # no such secret: a 400, as ever


@pytest.mark.parametrize(
    "source",
    ["a: " + "[" * 5_000 + "]" * 5_000, ALIAS_BOMB + "name: x\n", 'name: "a\\0b"\nimage: x\nrun: [{command: hi}]\n'],
    ids=["deep", "alias-bomb", "nul"],
)
def test_the_new_run_page_shows_a_hostile_specs_errors(alice, source):
    client = Client()
    client.force_login(alice)
    response = client.post("/runs/new/", {"spec": source})
    assert response.status_code == 400
    assert not Run.objects.exists()


# ---------------------------------------------------------------- reproduce


@pytest.mark.parametrize(
    "overrides, loc",
    [
        ({"run": 5}, "run"),
        ({"run": "echo hi"}, "run"),
        ({"run": None}, "run"),
        ({"run": [5]}, "run[0]"),
        ({"run": [{"command": 5}]}, "run[0].command"),
        ({"run": [{"command": "true", "workdir": 5}]}, "run[0].workdir"),
        ({"resources": "x"}, "resources"),
        ({"resources": [1]}, "resources"),
        ({"resources": 5}, "resources"),
        ({"resources": {"preset": 5}}, "resources.preset"),
        ({"resources": {"gpu": 1}}, "resources.gpu"),
        ({"env": {"A": [1]}}, 'env["A"]'),
        ({"env": {"A": 1}}, 'env["A"]'),
        ({"env": {"A": True}}, 'env["A"]'),
        ({"env": {"A": {"secret": 5}}}, 'env["A"].secret'),
        ({"env": {"A": {"x": 1}}}, 'env["A"].x'),
        ({"env": {"1A": "x"}}, 'env["1A"]'),
        ({"env": "A=1"}, "env"),
        ({"env": None}, "env"),
        ({"env": [["A", "1"]]}, "env"),
        ({"image": "other"}, "image"),
        ([{"env": {}}], ""),
        ("env", ""),
        (5, ""),
    ],
)
def test_it_refuses_a_wrong_override_naming_the_field(api, alice, overrides, loc):
    run = complete(launch(alice))
    response = api.post(f"/runs/{run.pk}/reproduce", json.dumps(overrides), content_type="application/json")
    assert_error(response, 400, loc)
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        ('{"env": ' * 10_000 + "{}" + "}" * 10_000, "application/json", 400),
        ("[" * 100_000, "application/json", 400),
        ('{"env": {"A": 1e999}}', "application/json", 400),
        ('{"env": {"A": NaN}}', "application/json", 400),
        ('{"env": {"A": "\\u0000"}}', "application/json", 400),
        ('{"env": {"A": "\\udfff"}}', "application/json", 400),
        ('{"env": {', "application/json", 400),
        ("env: {A: 1}", "application/yaml", 415),
    ],
    ids=["deep", "unclosed-deep", "1e999", "nan", "nul", "lone-surrogate", "truncated", "yaml"],
)
def test_it_refuses_a_hostile_reproduce_body(api, alice, body, content_type, status):
    run = complete(launch(alice))
    assert_error(api.post(f"/runs/{run.pk}/reproduce", body, content_type=content_type), status)
    assert Run.objects.count() == 1


def test_it_answers_a_form_sent_to_reproduce_with_415(alice):
    run = complete(launch(alice))
    client, token = signed_in_with_csrf(alice)
    # The CSRF check reads the form before the view does.
    response = client.post(f"/api/v1/runs/{run.pk}/reproduce", {"csrfmiddlewaretoken": token, "env": "A=1"})
    assert_error(response, 415)
    assert Run.objects.count() == 1


def test_it_still_reproduces_with_good_overrides(api, alice):
    run = complete(launch(alice, env={"A": "1", "B": "2"}))
    response = api.post(f"/runs/{run.pk}/reproduce", json.dumps({"env": {"A": "3", "B": None}, "resources": None}),
                        content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["spec"]["env"] == {"A": "3"}


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "body",
    ['{"value": ' * 10_000 + '"x"' + "}" * 10_000, "[" * 100_000, '{"value": 1e999}', '{"value": "\\u0000"}',
     '{"value": "\\ud800"}', "[]", '"just a string"', "null", "{}", '{"value": 5}', '{"value": ["x"]}', "{"],
    ids=["deep", "unclosed-deep", "1e999", "nul", "lone-surrogate", "list", "string", "null", "no-value", "number",
         "list-value", "truncated"],
)
def test_it_refuses_a_hostile_secret_body(api, body):
    response = api.client.put("/api/v1/secrets/HF_TOKEN", body, content_type="application/json", headers=api.headers)
    assert_error(response, 400)
    assert not TeamSecret.objects.exists()


def test_it_still_stores_a_secret(api):
    response = api.client.put("/api/v1/secrets/HF_TOKEN", '{"value": "hunter2"}', content_type="application/json",
                              headers=api.headers)
    assert response.status_code == 200, response.content
    assert TeamSecret.objects.filter(name="HF_TOKEN").exists()


# ---------------------------------------------------------------- parameters, paths, methods


@pytest.mark.parametrize(
    "path, params, status, loc",
    [
        ("/runs", {"limit": "1e999"}, 400, "limit"),
        ("/runs", {"limit": "nan"}, 400, "limit"),
        ("/runs", {"limit": "9" * 5000}, 400, "limit"),
        ("/runs", {"limit": "-1"}, 400, "limit"),
        ("/runs", {"cursor": "garbage"}, 400, "cursor"),
        ("/runs", {"cursor": "%%%"}, 400, "cursor"),
        ("/runs", {"status": "exploded"}, 400, "status"),
        ("/runs", {"tag": "a\x00b"}, 400, "tag"),
        ("/runs", {"q": "\x00"}, 400, "q"),
        ("/runs", {"owner": "\x00"}, 400, "owner"),
        ("/runs", {"team": "\x00"}, 400, "team"),
        ("/runs", {"a\x00": "1"}, 400, "a\x00"),
        ("/runs/{run}/logs", {"after": "-1"}, 400, "after"),
        ("/runs/{run}/logs", {"after": "1e999"}, 400, "after"),
        ("/runs/{run}/logs", {"after": "99999999999999999999"}, 400, "after"),
        ("/runs/{run}/logs", {"limit": "0"}, 400, "limit"),
        ("/runs/{run}/logs/search", {"q": "\x00"}, 400, "q"),
        ("/runs/{run}/logs/search", {"q": "x", "after": "-1"}, 400, "after"),
        ("/runs/{run}/metrics/loss", {"x_min": "1e999"}, 400, "x_min"),
        ("/runs/{run}/metrics/loss", {"x_max": "nan"}, 400, "x_max"),
        ("/runs/{run}/metrics/loss", {"max_points": "inf"}, 400, "max_points"),
        ("/runs/{run}/metrics/loss", {"x": "\x00"}, 400, "x"),
        ("/runs/{run}/metrics/%00", {}, 400, "key"),
        ("/runs/{run}/files", {"path": "\x00"}, 400, "path"),
        ("/runs/{run}/files/raw", {"path": "a\x00"}, 400, "path"),
        ("/datasets", {"team": "\x00"}, 400, "team"),
        ("/datasets/mnist/versions", {"team": "\x00"}, 400, "team"),
        ("/datasets/%00/versions", {}, 400, "name"),
        ("/secrets", {"team": "\x00"}, 400, "team"),
        ("/runs/99999999999999999999999", {}, 404, None),
        ("/runs/2147483648/logs", {}, 404, None),
        ("/runs/9223372036854775808/events", {}, 404, None),
        ("/runs/-1", {}, 404, None),
        ("/runs/%D9%A3", {}, 404, None),
        ("/nowhere", {}, 404, None),
    ],
)
def test_it_answers_an_odd_parameter_with_a_4xx(api, alice, path, params, status, loc):
    run = launch(alice)
    response = api.get(path.format(run=run.pk), **params)
    assert_error(response, status, loc)


@pytest.mark.parametrize(
    "method, path",
    [("delete", "/secrets/%00"), ("delete", "/datasets/a%00/versions/1"), ("put", "/secrets/A%00")],
)
def test_it_refuses_nul_in_a_path_it_would_write(api, method, path):
    response = getattr(api.client, method)("/api/v1" + path, "{}", content_type="application/json", headers=api.headers)
    assert_error(response, 400, "name")


@pytest.mark.parametrize("method", ["put", "patch", "delete", "options", "trace"])
def test_it_answers_an_unknown_method_with_405(api, alice, method):
    run = launch(alice)
    for path in ("/runs", f"/runs/{run.pk}", f"/runs/{run.pk}/logs", "/datasets", "/secrets"):
        response = getattr(api.client, method)("/api/v1" + path, headers=api.headers)
        assert_error(response, 405)


def test_it_answers_a_huge_body_it_will_not_read_with_400(api, alice):
    run = complete(launch(alice))
    huge = '{"env": {"A": "' + "x" * (3 * 1024 * 1024) + '"}}'
    assert_error(api.post(f"/runs/{run.pk}/reproduce", huge, content_type="application/json"), 400)
    assert_error(api.post("/runs", huge, content_type="application/json"), 400)


def test_djangos_own_errors_answer_json_under_the_api(db):
    # An unknown Host is refused by Django before any view: under /api/ in the API's shape.
    response = Client().get("/api/v1/runs", headers={"host": "evil.example"})
    assert_error(response, 400)
    request = RequestFactory().get("/api/v1/runs")
    for handler, status in ((runs_api.server_error, 500), (runs_api.page_not_found, 404), (runs_api.permission_denied, 403)):
        response = handler(request) if status == 500 else handler(request, Exception("x"))
        assert (response.status_code, response["Content-Type"]) == (status, "application/json")
        assert set(json.loads(response.content)) == {"detail", "errors"}
    # Pages keep Django's own.
    page = runs_api.page_not_found(RequestFactory().get("/runs/1/nothing/"), Exception("x"))
    assert page.status_code == 404 and not page["Content-Type"].startswith("application/json")


ODD_VALUES = ["", "0", "-1", "1e999", "nan", "inf", "-inf", "99999999999999999999999", "9223372036854775808", "x",
              "\x00", "a\x00b", "[]", "{}", "é", "1.5", " 1", "0x10", "-0", "A" * 5000, "%00", "../..", "/"]


def test_no_odd_query_parameter_on_any_endpoint_is_a_server_error(alice):
    """The fuzz loop, kept: every read endpoint, each parameter it reads, every odd value."""
    run = complete(launch(alice))
    client = Client(raise_request_exception=False)
    headers = {"Authorization": f"Bearer {alice.token}"}
    reads = {
        "/runs": ["limit", "cursor", "status", "tag", "q", "owner", "team"],
        f"/runs/{run.pk}": ["unknown"],
        f"/runs/{run.pk}/logs": ["after", "limit"],
        f"/runs/{run.pk}/logs.txt": ["unknown"],
        f"/runs/{run.pk}/logs/search": ["q", "after", "limit"],
        f"/runs/{run.pk}/metrics/loss": ["x", "x_min", "x_max", "max_points"],
        f"/runs/{run.pk}/files": ["path"],
        f"/runs/{run.pk}/files/raw": ["path"],
        "/datasets": ["team"],
        "/datasets/mnist/versions": ["team"],
        "/secrets": ["team"],
    }
    server_errors = []
    for endpoint, names in reads.items():
        for name in names:
            for value in ODD_VALUES:
                response = client.get("/api/v1" + endpoint, {name: value}, headers=headers)
                if response.status_code >= 500:
                    server_errors.append((endpoint, name, value, response.status_code))
    assert server_errors == []


# ---------------------------------------------------------------- websockets


MALFORMED_FRAMES = [  # as the server receives them (the test client refuses empty frames)
    {"text": "not json"},
    {"text": ""},
    {"text": "[1, 2]"},
    {"text": '"a string"'},
    {"text": '{"type": 5}'},
    {"text": '{"type": "subscribe", "run": "*"}'},
    {"text": "[" * 100_000},
    {"text": '{"a": ' * 10_000 + "1" + "}" * 10_000},
    {"text": '{"x": NaN, "y": 1e999}'},
    {"text": "x" * 1_000_000},
    {"bytes": b"\x00\xff binary"},
    {"bytes": b""},
    {"text": None, "bytes": None},
]


def test_the_runs_socket_answers_malformed_frames_and_stays_up(alice, engine):
    cookie = session_cookie(alice)

    async def talk():
        socket = WebsocketCommunicator(application, "/ws/runs/", headers=[ORIGIN, (b"cookie", cookie)])
        assert (await socket.connect(timeout=10))[0]
        answers = []
        for frame in MALFORMED_FRAMES:
            await socket.send_input({"type": "websocket.receive", **frame})
            answers.append(await socket.receive_json_from(timeout=10))
        # Still up, still telling the team.
        run = await database_sync_to_async(launch_local)(alice, "true")
        seen = []
        while "completed" not in seen:
            message = await socket.receive_json_from(timeout=30)
            if message["type"] == "status" and message["run"] == run.pk:
                seen.append(message["to"])
        await socket.disconnect()
        return answers, seen

    answers, seen = in_thread(talk)
    assert [a["type"] for a in answers] == ["error"] * len(MALFORMED_FRAMES)
    assert all(a["detail"] for a in answers)
    assert seen[-1] == "completed"


def test_the_log_socket_answers_malformed_frames_and_keeps_streaming(alice, engine):
    cookie = session_cookie(alice)
    run = launch_local(alice, "for i in 1 2 3; do echo before-$i; done; sleep 3; for i in 1 2 3; do echo after-$i; done")
    wait_for(run.pk, "running")

    async def talk():
        socket = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/logs/?after=0", headers=[ORIGIN, (b"cookie", cookie)])
        assert (await socket.connect(timeout=10))[0]
        for frame in MALFORMED_FRAMES:
            await socket.send_input({"type": "websocket.receive", **frame})
        messages = []
        while not messages or messages[-1]["type"] != "end":
            messages.append(await socket.receive_json_from(timeout=30))
        await socket.disconnect()
        return messages

    messages = in_thread(talk)
    assert [m for m in messages if m["type"] == "error"] and all(m["detail"] for m in messages if m["type"] == "error")
    lines = [line["text"] for m in messages if m["type"] == "lines" for line in m["lines"]]
    assert lines == ["before-1", "before-2", "before-3", "after-1", "after-2", "after-3"]
    assert messages[-1] == {"type": "end", "status": "completed"}


@pytest.mark.parametrize("after", ["99999999999999999999999", "-5", "1e999", "x", "%00"])
def test_the_log_socket_takes_an_odd_after(alice, engine, after):
    run = wait_for(launch_local(alice, "echo one").pk, "completed", removed=True)
    connected, _, messages = in_thread(collect, f"/ws/runs/{run.pk}/logs/?after={after}", [ORIGIN, (b"cookie", session_cookie(alice))])
    assert connected
    assert messages[-1] == {"type": "end", "status": "completed"}


def launch_local(user, command: str) -> Run:
    return launch_run(user, "local", command)


RESIZES = [
    ({"type": "resize", "cols": "1e999", "rows": 30}, "error"),
    ('{"type": "resize", "cols": 1e999, "rows": 30}', "error"),
    ('{"type": "resize", "cols": NaN, "rows": 30}', "error"),
    ({"type": "resize", "cols": -5, "rows": -5}, "2 2"),
    ({"type": "resize", "cols": "x", "rows": "y"}, "error"),
    ({"type": "resize", "cols": None, "rows": None}, "error"),
    ({"type": "resize"}, "error"),
    ({"type": "resize", "cols": True, "rows": False}, "error"),
    ({"type": "resize", "cols": {"deep": [1] * 500}, "rows": 30}, "error"),
    ({"type": "resize", "cols": [[[[1]]]], "rows": 30}, "error"),
    (f'{{"type": "resize", "cols": 1{"0" * 400}, "rows": 1{"0" * 400}}}', "500 1000"),
    ({"type": "resize", "cols": 10**30, "rows": 10**30}, "500 1000"),
    ({"type": "resize", "cols": 123.9, "rows": 33.2}, "33 123"),
    ("not json", "error"),
    ("[]", "error"),
    ('{"type": "explode"}', "error"),
    ("{" * 50_000, "error"),
]


def test_the_terminal_answers_absurd_resizes_and_malformed_frames(alice, executor):
    cookie = session_cookie(alice)
    run = running(alice, executor)

    async def talk():
        shell = Conversation(run.pk, cookie, "mode=shell&cols=1e999&rows=-3")  # not whole numbers: 80x24
        assert (await shell.open())[0]
        await shell.control("session")
        await shell.type("stty size\n")
        await shell.until("24 80")  # the size in the URL was no number: the default
        results = []
        for resize, expected in RESIZES:
            await shell.socket.send_to(text_data=resize if isinstance(resize, str) else json.dumps(resize))
            if expected == "error":
                results.append((await shell.control("error"))["type"])
            else:
                marker = f"size-{len(results)}"
                await shell.type(f"echo {marker}: $(stty size)\n")
                await shell.until(f"{marker}: {expected}")
                results.append(expected)
        await shell.socket.send_to(bytes_data=b"x" * (2 * 1024 * 1024))  # more than one paste
        results.append((await shell.control("error"))["type"])
        await shell.type("echo still-$((40 + 2))\n")
        await shell.until("still-42")
        await shell.socket.send_to(text_data=json.dumps({"type": "close"}))
        results.append((await shell.control("exit"))["type"])
        return results

    results = in_thread(talk)
    assert results == [expected for _, expected in RESIZES] + ["error", "exit"]
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_user_holds_at_most_the_allowed_number_of_terminals(alice, bob, engine, settings):
    settings.RUNYARD_TERMINAL_MAX_SESSIONS = 2
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    run = running(alice, "local")

    async def talk():
        opened = [Conversation(run.pk, alice_cookie) for _ in range(2)]
        for shell in opened:
            await shell.open()
            await shell.control("session")
        third = Conversation(run.pk, alice_cookie)
        await third.open()
        refused = (await third.control("error"))["detail"], (await third.control("closed"))["code"]
        # A teammate has places of their own.
        teammates = Conversation(run.pk, bob_cookie)
        await teammates.open()
        bobs = (await teammates.control("session"))["type"]
        # One closed: a place again.
        await opened[0].socket.send_to(text_data=json.dumps({"type": "close"}))
        await opened[0].control("exit")
        again = Conversation(run.pk, alice_cookie)
        await again.open()
        later = (await again.control("session"))["type"]
        for shell in (opened[1], teammates, again):
            await shell.socket.send_to(text_data=json.dumps({"type": "close"}))
            await shell.control("exit")
        return refused, bobs, later

    (detail, code), bobs, later = in_thread(talk)
    assert code == 4429
    assert "2 terminals open, the most allowed" in detail
    assert (bobs, later) == ("session", "session")
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def shell_pid(run: Run, session_id: str) -> int:
    """The host PID of a session's shell: the PTY's child, or the engine's exec inspect."""
    session = next(s for s in sessions.sessions_of_run(run.pk) if s.id == session_id)
    terminal = session.terminal
    if run.executor == "local":
        return terminal.process.pid
    return terminal.shell_process()[0]


def alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie waiting to be reaped)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pid: int, timeout: float = 40) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def open_then_drop(run: Run, cookie: bytes) -> tuple[str, int]:
    """A shell that starts a job, then its browser goes away: the session id and the job's host PID."""

    async def talk():
        shell = Conversation(run.pk, cookie)
        await shell.open()
        session_id = (await shell.control("session"))["id"]
        # A job that ignores the hangup a closing terminal sends: it must end with the shell all the same.
        await shell.type("(trap '' HUP; exec sleep 1000) & echo started-$((1 + 1))-$!.\n")
        await shell.until("started-2-")
        await shell.until(".\r\n")
        await shell.socket.disconnect()
        return session_id, shell.output.decode().split("started-2-")[-1].split(".")[0]

    session_id, job = in_thread(talk)
    if run.executor == "docker":  # $! is the container's PID: the host's from `docker top`
        top = docker.from_env().containers.get(get_executor("docker").container_name(run)).top(ps_args="-eo pid,args")
        job = next(pid for pid, command in top["Processes"] if command == "sleep 1000")
    return session_id, int(job)


def test_a_dropped_shell_is_gone_once_its_keep_time_passes(alice, executor, settings):
    settings.RUNYARD_TERMINAL_KEEP_SECONDS = 1
    run = running(alice, executor)
    session_id, job = open_then_drop(run, session_cookie(alice))
    pid = shell_pid(run, session_id)
    assert alive(pid) and alive(job)
    assert wait_until_gone(pid), f"the shell {pid} outlived its keep time"
    assert wait_until_gone(job), f"the shell's job {job} outlived it"
    assert sessions.find_session(session_id, run_id=run.pk, user_id=alice.pk) is None
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def test_a_dropped_shell_is_gone_once_its_run_ends(alice, executor):
    run = running(alice, executor)
    session_id, job = open_then_drop(run, session_cookie(alice))
    pid = shell_pid(run, session_id)
    assert alive(pid) and alive(job)  # kept for its keep time (60 s): the browser may come back
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)
    assert wait_until_gone(pid), f"the shell {pid} outlived its run"
    assert wait_until_gone(job), f"the shell's job {job} outlived its run"
    assert sessions.find_session(session_id, run_id=run.pk, user_id=alice.pk) is None


@pytest.fixture
def own_console(worker_env, tmp_path):
    """A Daphne of this test's own, to be stopped as an operator would stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (tmp_path / "daphne.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
            cwd=Path(__file__).resolve().parent.parent, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "daphne.log").read_text()[-3000:]
                time.sleep(0.2)
        yield port, process
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_shells_end_when_the_server_stops(alice, executor, own_console):
    port, daphne = own_console
    run = running(alice, executor)
    shell = WebSocket(port, f"/ws/runs/{run.pk}/terminal/?mode=shell", session_cookie(alice))
    assert shell.status == 101, shell.headers
    _, hello = shell.receive()
    assert json.loads(hello)["type"] == "session"
    shell.send(BINARY, b"(trap '' HUP; exec sleep 1000) & echo pids-$((1 + 1))-$$-$!.\n")
    shell.until(b"pids-2-")
    shell.until(b".\r\n")
    pids = [int(p) for p in shell.output.decode().split("pids-2-")[-1].split(".")[0].split("-")]
    if executor == "docker":  # the container's PIDs: the host's from `docker top`
        top = docker.from_env().containers.get(get_executor("docker").container_name(run)).top(ps_args="-eo pid,args")
        pids = [int(pid) for pid, command in top["Processes"] if command in ("sh -l", "sleep 1000")]
        assert len(pids) == 2, top
    assert all(alive(pid) for pid in pids)

    daphne.send_signal(signal.SIGTERM)  # the operator stops the console; the run goes on
    daphne.wait(30)
    assert [pid for pid in pids if not wait_until_gone(pid)] == []
    assert Run.objects.get(pk=run.pk).status == "running"
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)


def container_processes(run: Run) -> list[str]:
    top = docker.from_env().containers.get(get_executor("docker").container_name(run)).top(ps_args="-eo pid,args")
    return [command for _, command in top["Processes"]]


def test_a_shell_is_killed_from_inside_its_container_when_the_engine_is_elsewhere(alice, engine, docker_engine):
    """With an engine on another machine this host's /proc shows nothing of the
    container: the container itself finds the shell's processes by their marker."""
    run = running(alice, "docker")
    terminal = get_executor("docker").open_terminal(run, "shell", 80, 24)
    try:
        terminal.write(b"(trap '' HUP; exec sleep 1000) &\n")
        deadline = time.monotonic() + 30
        while "sleep 1000" not in container_processes(run):
            assert time.monotonic() < deadline, container_processes(run)
            time.sleep(0.1)
        assert "sh -l" in container_processes(run)
        terminal.kill_from_inside(terminal.shell_process()[1])
        left = container_processes(run)
        assert "sleep 1000" not in left and "sh -l" not in left, left
        assert "sleep 120" in left  # the run's own command goes on
    finally:
        terminal.close()
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated", removed=True)
