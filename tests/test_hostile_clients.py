"""A hostile signed-in client (issue 7, bullet 5): whatever it sends to the JSON API
and the websockets, it gets a 4xx naming the problem, an error message or a normal
close, never a 500 or a crashed consumer; its shells are capped in number and end
when their keep time passes, their run ends or the server stops.

The API tables hold the cases a fuzz loop over every endpoint found (and the holes
the issue reports); each row is a body or parameters a client could send.
"""

import json

import pytest
import yaml
from django.test import Client, RequestFactory

from runs import api as runs_api
from runs.models import Run, TeamSecret
from tests.conftest import BUSYBOX, Api
from tests.test_api import assert_error, complete, launch, spec


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def spec_json(**extra) -> str:
    return json.dumps(spec("hostile", **extra))


def deep_json(depth: int) -> str:
    return '{"name": "x", "image": "y", "run": ' + "[" * depth + "]" * depth + "}"


ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{before}'] * 9)}]\n" for before, name in zip("abcdefgh", "bcdefghi")
).replace("b: &b [*a", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\nb: &b [*a', 1)
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
