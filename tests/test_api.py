"""API v1 as a client sees it (SPEC §3): auth, errors, access by persona, listing,
logs and the management command that issues tokens.

No worker and no Docker: these tests run in one database transaction that is never
committed, so a run created here stays pending (the task is sent on commit).
"""

import base64
import datetime as dt
import json
from io import StringIO

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from runs.lifecycle import transition
from runs.models import LogChunk, Membership, Run, RunEvent
from runs.services import create_run
from tests.conftest import BUSYBOX, Api

RUN_FIELDS = {
    "id", "name", "description", "tags", "status", "status_reason", "exit_code", "owner", "team",
    "created_at", "started_at", "finished_at", "duration_seconds", "progress", "eta_seconds", "credits",
    "spec", "reproduced_from", "executor",
}


def spec(name="api-test", **extra) -> dict:
    return {"name": name, "image": BUSYBOX, "run": [{"command": "echo hi"}], **extra}


def spec_yaml(name="api-test", **extra) -> str:
    return yaml.safe_dump(spec(name, **extra))


def launch(user, name="api-test", **extra) -> Run:
    return create_run(user=user, source=spec_yaml(name, **extra))


def complete(run: Run) -> Run:
    for status in ("initializing", "running", "stopping", "completed"):
        run = transition(run.pk, status, reason=f"test: {status}")
    return run


def assert_error(response, status: int, loc: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert isinstance(body["detail"], str) and body["detail"]
    if loc is not None:
        assert loc in [error["loc"] for error in body["errors"]], body
    return body


def get(path, headers=None, client=None):
    return (client or Client()).get("/api/v1" + path, headers=headers or {})


# ---------------------------------------------------------------- auth


def test_it_requires_credentials(db):
    response = get("/runs")
    body = assert_error(response, 401)
    assert body["errors"] == []
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer ry_not-a-real-token", "Bearer ", "Bearer", "Basic x", "ry_token-without-scheme"])
def test_it_rejects_a_bad_authorization_header(alice, header):
    assert_error(get("/runs", {"Authorization": header}), 401)


def test_it_rejects_a_revoked_token(alice):
    alice.api_tokens.all().delete()
    assert_error(get("/runs", {"Authorization": f"Bearer {alice.token}"}), 401)


def test_it_rejects_an_inactive_users_token(alice):
    alice.is_active = False
    alice.save()
    assert_error(get("/runs", {"Authorization": f"Bearer {alice.token}"}), 401)


def test_it_accepts_a_session_for_reads(alice):
    run = launch(alice)
    client = Client()
    assert client.login(username="alice", password="pw-alice")
    response = get(f"/runs/{run.pk}", client=client)
    assert response.status_code == 200
    assert response.json()["id"] == run.pk


def signed_in_with_csrf(user) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=user.username, password="pw-" + user.username)
    assert client.get("/accounts/login/").status_code == 200  # sets the csrftoken cookie
    return client, client.cookies["csrftoken"].value


def test_it_requires_the_csrf_token_for_a_session_post(alice):
    client, _ = signed_in_with_csrf(alice)
    response = client.post("/api/v1/runs", spec_yaml(), content_type="application/yaml")
    body = assert_error(response, 403)
    assert "CSRF" in body["detail"]
    assert not Run.objects.exists()


def test_it_rejects_a_wrong_csrf_token(alice):
    client, _ = signed_in_with_csrf(alice)
    response = client.post("/api/v1/runs", spec_yaml(), content_type="application/yaml", headers={"X-CSRFToken": "x" * 32})
    assert_error(response, 403)
    assert not Run.objects.exists()


def test_it_accepts_a_session_post_with_the_csrf_token(alice):
    client, token = signed_in_with_csrf(alice)
    response = client.post("/api/v1/runs", spec_yaml(), content_type="application/yaml", headers={"X-CSRFToken": token})
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == "alice"


def test_it_does_not_ask_a_bearer_client_for_csrf(alice):
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        "/api/v1/runs", spec_yaml(), content_type="application/yaml", headers={"Authorization": f"Bearer {alice.token}"}
    )
    assert response.status_code == 201, response.content


# ---------------------------------------------------------------- create


def test_it_creates_a_run_from_yaml(api, alice):
    response = api.post("/runs", spec_yaml("mnist", description="first try", tags=["baseline", "mnist"]))
    assert response.status_code == 201, response.content
    run = response.json()
    assert RUN_FIELDS <= set(run)
    assert response["Location"] == f"/api/v1/runs/{run['id']}"
    assert run["name"] == "mnist"
    assert run["description"] == "first try"
    assert run["tags"] == ["baseline", "mnist"]
    assert run["status"] == "pending"
    assert run["status_reason"] == ""
    assert run["exit_code"] is None
    assert (run["owner"], run["team"]) == ("alice", "vision")
    created = dt.datetime.fromisoformat(run["created_at"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 60
    assert run["started_at"] is None and run["finished_at"] is None
    assert run["duration_seconds"] is None
    assert run["progress"] is None and run["eta_seconds"] is None
    assert run["credits"] == "0.0000"
    assert run["spec"]["image"] == BUSYBOX
    assert run["spec"]["resources"]["preset"] == "cpu-small"
    assert run["reproduced_from"] is None
    assert run["executor"] in ("docker", "local")
    # The same run, read back.
    assert api.get(f"/runs/{run['id']}").json() == run
    assert Run.objects.get(pk=run["id"]).owner == alice


def test_it_creates_the_same_run_from_json(api):
    from_yaml = api.post("/runs", spec_yaml("twin", tags=["t"], termination_grace="30s"))
    from_json = api.post("/runs", json.dumps(spec("twin", tags=["t"], termination_grace="30s")), content_type="application/json")
    assert (from_yaml.status_code, from_json.status_code) == (201, 201)
    assert from_json.json()["spec"] == from_yaml.json()["spec"]
    assert from_json.json()["id"] != from_yaml.json()["id"]


def test_it_accepts_yaml_with_a_charset(api):
    response = api.post("/runs", spec_yaml(), content_type="application/yaml; charset=utf-8")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "body, content_type, loc",
    [
        ("name: [unclosed\n", "application/yaml", ""),
        ("just a string", "application/yaml", ""),
        ('{"name": "x",', "application/json", ""),
        ("[1, 2]", "application/json", ""),
        (yaml.safe_dump({**spec(), "run": [{"command": "true", "workdir": 3}]}), "application/yaml", "run[0].workdir"),
        (yaml.safe_dump(spec(resources={"gpu": 1})), "application/yaml", "resources.gpu"),
        (yaml.safe_dump({"name": "no-image", "run": [{"command": "true"}]}), "application/yaml", "image"),
        (json.dumps({"name": "no-image", "run": [{"command": "true"}]}), "application/json", "image"),
        (yaml.safe_dump(spec(resources={"preset": "gpu-giant"})), "application/yaml", "resources.preset"),
        (yaml.safe_dump(spec(resources={"cluster": "mars"})), "application/yaml", "resources.cluster"),
    ],
    ids=["bad-yaml", "not-a-mapping", "bad-json", "json-list", "wrong-type", "unknown-key", "no-image", "no-image-json",
         "unknown-preset", "unknown-cluster"],
)
def test_it_rejects_an_invalid_spec_and_creates_nothing(api, body, content_type, loc):
    response = api.post("/runs", body, content_type=content_type)
    body = assert_error(response, 400, loc)
    assert all(error["msg"] for error in body["errors"])
    assert not Run.objects.exists()


def test_it_names_every_problem_at_once(api):
    response = api.post("/runs", yaml.safe_dump({"name": "x", "run": [{"command": "true", "workdir": 3}], "resources": {"gpu": 1}}))
    body = assert_error(response, 400)
    assert {"image", "run[0].workdir", "resources.gpu"} <= {error["loc"] for error in body["errors"]}


def test_it_rejects_an_unsupported_content_type(api):
    assert_error(api.post("/runs", "<run/>", content_type="application/xml"), 415)
    assert not Run.objects.exists()


def test_it_rejects_a_form_post_as_unsupported(alice):
    client, token = signed_in_with_csrf(alice)
    response = client.post("/api/v1/runs", {"name": "x", "csrfmiddlewaretoken": token})
    assert_error(response, 415)
    assert not Run.objects.exists()


def test_it_rejects_a_body_over_256_kib(api):
    body = spec_yaml(description="x" * (300 * 1024))
    assert_error(api.post("/runs", body), 400)
    assert not Run.objects.exists()


def test_it_does_not_let_a_viewer_launch(viola):
    response = Api(viola).post("/runs", spec_yaml())
    assert_error(response, 403)
    assert not Run.objects.exists()


def test_it_launches_in_a_named_team_of_the_user(api, alice):
    from runs.models import Team

    Membership.objects.create(user=alice, team=Team.objects.create(name="nlp"), role="member")
    response = api.post("/runs?team=nlp", spec_yaml())
    assert response.status_code == 201
    assert response.json()["team"] == "nlp"


def test_it_hides_a_team_the_user_is_not_in(api, charlie):
    assert_error(api.post("/runs?team=speech", spec_yaml()), 404, "team")
    assert_error(api.post("/runs?team=no-such-team", spec_yaml()), 404, "team")
    assert not Run.objects.exists()


def test_it_answers_a_wrong_method_with_405(api, alice):
    run = launch(alice)
    response = api.get(f"/runs/{run.pk}/terminate")
    assert_error(response, 405)
    assert response["Allow"] == "POST"
    assert Run.objects.get(pk=run.pk).status == "pending"


# ---------------------------------------------------------------- list


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


def test_it_lists_only_the_users_teams_runs(alice, bob, charlie):
    mine, bobs, theirs = launch(alice), launch(bob), launch(charlie)
    assert ids(Api(alice).get("/runs")) == [bobs.pk, mine.pk]
    assert ids(Api(bob).get("/runs")) == [bobs.pk, mine.pk]
    assert ids(Api(charlie).get("/runs")) == [theirs.pk]


def test_it_lists_runs_with_every_field(api, alice):
    launch(alice)
    body = api.get("/runs").json()
    assert set(body) == {"items", "next_cursor"}
    assert RUN_FIELDS <= set(body["items"][0])
    assert body["next_cursor"] is None


def test_it_filters_by_status(api, alice):
    pending = launch(alice)
    running = launch(alice)
    transition(running.pk, "initializing")
    transition(running.pk, "running")
    terminated = launch(alice)
    transition(terminated.pk, "terminated")
    assert ids(api.get("/runs", status="pending")) == [pending.pk]
    assert ids(api.get("/runs", status=["pending", "terminated"])) == [terminated.pk, pending.pk]
    assert ids(api.get("/runs", status="completed")) == []


def test_it_ignores_an_empty_filter(api, alice):
    run = launch(alice)
    assert ids(api.get("/runs", status="", tag="", q="", owner="", limit="", cursor="")) == [run.pk]


def test_it_rejects_an_unknown_status(api):
    body = assert_error(api.get("/runs", status=["pending", "finished"]), 400, "status")
    assert len(body["errors"]) == 1  # pending is fine
    assert "'finished'" in body["errors"][0]["msg"]


def test_it_filters_by_tag_name_and_owner(alice, bob):
    both = launch(alice, "ResNet-50 baseline", tags=["baseline", "vision"])
    only_vision = launch(alice, "vit", tags=["vision"])
    bobs = launch(bob, "resnet-101", tags=["baseline"])
    api = Api(alice)
    assert ids(api.get("/runs", tag="baseline")) == [bobs.pk, both.pk]
    assert ids(api.get("/runs", tag="vision")) == [only_vision.pk, both.pk]
    assert ids(api.get("/runs", tag="vis")) == []  # a whole tag, not a part of one
    assert ids(api.get("/runs", q="resnet")) == [bobs.pk, both.pk]  # any case
    assert ids(api.get("/runs", owner="bob")) == [bobs.pk]
    assert ids(api.get("/runs", owner="bob", tag="vision")) == []
    assert ids(api.get("/runs", q="resnet", owner="alice", tag="baseline")) == [both.pk]


def test_it_pages_through_every_run_once_newest_first(alice, bob, charlie):
    runs = [launch(alice if i % 2 else bob, f"run-{i}") for i in range(7)]
    launch(charlie)
    api = Api(alice)
    seen, cursor, pages = [], None, 0
    while True:
        body = api.get("/runs", limit=3, **({"cursor": cursor} if cursor else {})).json()
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted((r.pk for r in runs), reverse=True)
    assert pages == 3


def test_it_keeps_filters_across_pages(api, alice):
    tagged = [launch(alice, tags=["keep"]) for _ in range(3)]
    launch(alice)
    first = api.get("/runs", tag="keep", limit=2).json()
    second = api.get("/runs", tag="keep", limit=2, cursor=first["next_cursor"]).json()
    assert [i["id"] for i in first["items"] + second["items"]] == [r.pk for r in reversed(tagged)]
    assert second["next_cursor"] is None


def test_it_does_not_offer_a_next_page_when_the_last_one_is_full(api, alice):
    for _ in range(4):
        launch(alice)
    assert api.get("/runs", limit=4).json()["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    ["!!!", "abc", "not a cursor", base64.urlsafe_b64encode(b"seven").decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode()],
)
def test_it_rejects_a_garbage_cursor(api, alice, cursor):
    launch(alice)
    assert_error(api.get("/runs", cursor=cursor), 400, "cursor")


@pytest.mark.parametrize("limit", ["0", "-1", "201", "abc", "1.5"])
def test_it_rejects_a_bad_limit(api, limit):
    assert_error(api.get("/runs", limit=limit), 400, "limit")


# ---------------------------------------------------------------- one run, by persona


READ_PATHS = ["", "/events", "/logs", "/logs.txt"]


@pytest.mark.parametrize("suffix", READ_PATHS)
def test_it_hides_another_teams_run_like_a_missing_one(alice, charlie, suffix):
    run = launch(alice)
    missing = Run.objects.order_by("-pk").first().pk + 1000
    other = assert_error(Api(charlie).get(f"/runs/{run.pk}{suffix}"), 404)
    nonexistent = assert_error(Api(charlie).get(f"/runs/{missing}{suffix}"), 404)
    assert other == nonexistent


@pytest.mark.parametrize("action", ["terminate", "reproduce"])
def test_it_hides_another_teams_run_from_actions(alice, charlie, action):
    run = complete(launch(alice)) if action == "reproduce" else launch(alice)
    assert_error(Api(charlie).post(f"/runs/{run.pk}/{action}"), 404)
    assert Run.objects.count() == 1
    assert Run.objects.get(pk=run.pk).status == run.status


@pytest.mark.parametrize("suffix", READ_PATHS)
def test_it_lets_a_teammate_read_the_run(alice, bob, viola, suffix):
    run = launch(alice)
    assert Api(bob).get(f"/runs/{run.pk}{suffix}").status_code == 200
    assert Api(viola).get(f"/runs/{run.pk}{suffix}").status_code == 200


# ---------------------------------------------------------------- logs


def with_log(run: Run, chunks: list[list], complete: bool = True) -> Run:
    """Store chunks the way the collector does: consecutive line numbers from 1."""
    n = 1
    for lines in chunks:
        LogChunk.objects.create(run=run, first_line=n, line_count=len(lines), lines=lines)
        n += len(lines)
    Run.objects.filter(pk=run.pk).update(log_lines=n - 1, log_complete=complete)
    run.refresh_from_db()
    return run


T0 = 1_700_000_000.25

# Nine lines in chunks of 3, 2 and 4; line 5 and 7 on stderr.
CHUNKS = [
    [[T0, 0, "line 1"], [T0 + 1, 0, "line 2"], [T0 + 2, 0, "line 3"]],
    [[T0 + 3, 0, "line 4"], [T0 + 4, 1, "line 5 (err)"]],
    [[T0 + 5, 0, "line 6"], [T0 + 6, 1, "line 7 (err)"], [T0 + 7, 0, ""], [T0 + 8, 0, "line 9 ünïcode"]],
]
TEXTS = [line[2] for chunk in CHUNKS for line in chunk]


def test_it_pages_logs_by_line_number(api, alice):
    run = with_log(launch(alice), CHUNKS)
    first = api.get(f"/runs/{run.pk}/logs", limit=4).json()
    assert set(first) == {"lines", "next", "complete"}
    assert [line["n"] for line in first["lines"]] == [1, 2, 3, 4]
    assert (first["next"], first["complete"]) == (4, False)
    second = api.get(f"/runs/{run.pk}/logs", after=first["next"], limit=4).json()
    assert [line["n"] for line in second["lines"]] == [5, 6, 7, 8]
    assert (second["next"], second["complete"]) == (8, False)
    last = api.get(f"/runs/{run.pk}/logs", after=second["next"], limit=4).json()
    assert [line["n"] for line in last["lines"]] == [9]
    assert (last["next"], last["complete"]) == (9, True)
    after_the_end = api.get(f"/runs/{run.pk}/logs", after=9).json()
    assert after_the_end == {"lines": [], "next": 9, "complete": True}


def test_it_names_streams_and_times_each_line(api, alice):
    run = with_log(launch(alice), CHUNKS)
    lines = api.get(f"/runs/{run.pk}/logs").json()["lines"]
    assert set(lines[0]) == {"n", "t", "stream", "text"}
    assert [line["stream"] for line in lines] == ["stdout"] * 4 + ["stderr", "stdout", "stderr", "stdout", "stdout"]
    assert [line["text"] for line in lines] == TEXTS
    assert lines[0]["t"] == "2023-11-14T22:13:20.250000Z"
    assert dt.datetime.fromisoformat(lines[8]["t"].replace("Z", "+00:00")).timestamp() == T0 + 8


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 1000])
def test_it_resumes_exactly_after_line_n(api, alice, limit):
    run = with_log(launch(alice), CHUNKS)
    for after in range(0, 10):
        page = api.get(f"/runs/{run.pk}/logs", after=after, limit=limit).json()
        expected = list(range(after + 1, min(after + limit, 9) + 1))
        assert [line["n"] for line in page["lines"]] == expected, (after, limit)
        assert [line["text"] for line in page["lines"]] == TEXTS[after : after + limit]
        assert page["next"] == (expected[-1] if expected else after)


def test_it_says_incomplete_while_the_run_still_logs(api, alice):
    run = with_log(launch(alice), CHUNKS, complete=False)
    page = api.get(f"/runs/{run.pk}/logs").json()
    assert len(page["lines"]) == 9
    assert page["complete"] is False


def test_it_returns_an_empty_log_for_a_new_run(api, alice):
    run = launch(alice)
    assert api.get(f"/runs/{run.pk}/logs").json() == {"lines": [], "next": 0, "complete": False}
    response = api.get(f"/runs/{run.pk}/logs.txt")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b""


@pytest.mark.parametrize("params", [{"after": "-1"}, {"after": "x"}, {"limit": "0"}, {"limit": "10001"}])
def test_it_rejects_bad_log_paging(api, alice, params):
    run = launch(alice)
    assert_error(api.get(f"/runs/{run.pk}/logs", **params), 400, next(iter(params)))


def test_it_returns_the_whole_log_as_text(api, alice):
    run = with_log(launch(alice), CHUNKS)
    response = api.get(f"/runs/{run.pk}/logs.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert b"".join(response.streaming_content).decode() == "".join(text + "\n" for text in TEXTS)


def test_it_returns_a_long_log_as_text_across_many_chunks(api, alice):
    chunks = [[[T0, 0, f"{c}.{i}"] for i in range(3)] for c in range(45)]
    run = with_log(launch(alice), chunks)
    text = b"".join(api.get(f"/runs/{run.pk}/logs.txt").streaming_content).decode()
    assert text.splitlines() == [f"{c}.{i}" for c in range(45) for i in range(3)]


# ---------------------------------------------------------------- terminate, reproduce, events


def test_it_terminates_a_pending_run(api, alice):
    run = launch(alice)
    response = api.post(f"/runs/{run.pk}/terminate")
    assert response.status_code == 202
    assert response.json()["status"] == "terminated"
    assert response.json()["finished_at"] is not None
    assert Run.objects.get(pk=run.pk).status == "terminated"


def test_it_lets_a_teammate_terminate(alice, bob):
    run = launch(alice)
    assert Api(bob).post(f"/runs/{run.pk}/terminate").status_code == 202
    assert RunEvent.objects.get(run=run).actor_name == "bob"


def test_it_does_not_let_a_viewer_terminate_or_reproduce(alice, viola):
    live = launch(alice)
    assert_error(Api(viola).post(f"/runs/{live.pk}/terminate"), 403)
    assert Run.objects.get(pk=live.pk).status == "pending"
    done = complete(launch(alice))
    assert_error(Api(viola).post(f"/runs/{done.pk}/reproduce"), 403)
    assert Run.objects.count() == 2


def test_it_refuses_to_terminate_a_final_run(api, alice):
    run = complete(launch(alice))
    body = assert_error(api.post(f"/runs/{run.pk}/terminate"), 409)
    assert "already completed" in body["detail"]
    assert not RunEvent.objects.filter(run=run, to_status="terminated").exists()
    assert Run.objects.get(pk=run.pk).status == "completed"


def test_it_refuses_to_terminate_twice(api, alice):
    run = launch(alice)
    assert api.post(f"/runs/{run.pk}/terminate").status_code == 202
    body = assert_error(api.post(f"/runs/{run.pk}/terminate"), 409)
    assert "already terminated" in body["detail"]
    assert RunEvent.objects.filter(run=run, to_status="terminated").count() == 1


@pytest.mark.parametrize("statuses", [[], ["initializing"], ["initializing", "running"]])
def test_it_refuses_to_reproduce_a_live_run(api, alice, statuses):
    run = launch(alice)
    for status in statuses:
        transition(run.pk, status)
    body = assert_error(api.post(f"/runs/{run.pk}/reproduce"), 409)
    assert "reproduced" in body["detail"]
    assert Run.objects.count() == 1


def test_it_reproduces_a_final_run_with_the_same_frozen_spec(api, alice, bob):
    original = complete(launch(alice, tags=["again"], termination_grace="5s"))
    response = Api(bob).post(f"/runs/{original.pk}/reproduce")
    assert response.status_code == 201, response.content
    copy = response.json()
    assert response["Location"] == f"/api/v1/runs/{copy['id']}"
    assert copy["id"] != original.pk
    assert copy["reproduced_from"] == original.pk
    assert copy["spec"] == original.spec
    assert (copy["status"], copy["owner"], copy["team"]) == ("pending", "bob", "vision")


def test_it_lists_the_status_history_oldest_first(api, alice):
    run = launch(alice)
    transition(run.pk, "initializing", reason="picked up")
    transition(run.pk, "running", reason="container started")
    assert api.post(f"/runs/{run.pk}/terminate").status_code == 202
    events = api.get(f"/runs/{run.pk}/events").json()
    assert [set(e) for e in events] == [{"from", "to", "at", "actor", "reason"}] * 3
    assert [(e["from"], e["to"], e["actor"]) for e in events] == [
        ("pending", "initializing", "system"),
        ("initializing", "running", "system"),
        ("running", "terminated", "alice"),
    ]
    assert [e["reason"] for e in events] == ["picked up", "container started", "terminated by alice"]
    times = [dt.datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in events]
    assert times == sorted(times)


def test_it_lists_no_events_for_a_new_run(api, alice):
    assert api.get(f"/runs/{launch(alice).pk}/events").json() == []


# ---------------------------------------------------------------- createtoken


def createtoken(*args) -> list[str]:
    out = StringIO()
    call_command("createtoken", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_it_creates_a_user_a_team_a_membership_and_a_working_token(alice):
    run = launch(alice)
    output = createtoken("newbie", "--team", "t1", "--role", "viewer")
    token = output[-1]
    assert token.startswith("ry_") and " " not in token
    user = get_user_model().objects.get(username="newbie")
    assert Membership.objects.get(user=user, team__name="t1").role == "viewer"
    assert not user.has_usable_password()
    response = get("/runs", bearer(token))
    assert response.status_code == 200
    assert run.pk not in ids(response)
    # A viewer of t1 cannot launch there.
    assert_error(Client().post("/api/v1/runs?team=t1", spec_yaml(), content_type="application/yaml", headers=bearer(token)), 403)


def test_it_gives_a_viewer_token_no_launch_rights(db, defaults):
    token = createtoken("readonly", "--team", "t1", "--role", "viewer")[-1]
    response = Client().post("/api/v1/runs", spec_yaml(), content_type="application/yaml", headers=bearer(token))
    assert response.status_code == 403
    assert not Run.objects.exists()


def test_it_issues_another_working_token_for_an_existing_user(alice):
    run = launch(alice)
    first = createtoken("alice")[-1]
    second = createtoken("alice", "--team", "vision", "--role", "member")[-1]
    assert len({first, second, alice.token}) == 3
    for token in (first, second, alice.token):
        assert ids(get("/runs", bearer(token))) == [run.pk]
    assert alice.api_tokens.count() == 3
    assert list(Membership.objects.filter(user=alice).values_list("team__name", "role")) == [("vision", "member")]


def test_it_makes_a_superuser(db, defaults):
    token = createtoken("root", "--superuser")[-1]
    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.is_staff
    assert get("/runs", bearer(token)).status_code == 200


# ---------------------------------------------------------------- description, health, unknown paths


# Every path of SPEC §3 this version serves.
SERVED_PATHS = {
    "/health": {"get"},
    "/runs": {"get", "post"},
    "/runs/{id}": {"get"},
    "/runs/{id}/events": {"get"},
    "/runs/{id}/terminate": {"post"},
    "/runs/{id}/reproduce": {"post"},
    "/runs/{id}/files": {"get"},
    "/runs/{id}/files/raw": {"get"},
    "/runs/{id}/logs": {"get"},
    "/runs/{id}/logs.txt": {"get"},
    "/runs/{id}/metrics": {"get"},
    "/runs/{id}/metrics/{key}": {"get"},
}


def test_it_describes_the_api_in_openapi_3(db):
    response = get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    assert document["servers"] == [{"url": "/api/v1"}]
    for path, methods in SERVED_PATHS.items():
        assert methods <= set(document["paths"].get(path, {})), path
        for operation in document["paths"][path].values():
            assert operation["summary"] and operation["responses"]
    # Every $ref points at a schema that exists.
    refs = {part.split('"')[0] for part in json.dumps(document).split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(document["components"]["schemas"])
    assert RUN_FIELDS <= set(document["components"]["schemas"]["Run"]["properties"])
    assert {"201", "400", "401", "403", "404", "415"} <= set(document["paths"]["/runs"]["post"]["responses"])
    assert "409" in document["paths"]["/runs/{id}/terminate"]["post"]["responses"]
    assert "409" in document["paths"]["/runs/{id}/reproduce"]["post"]["responses"]


def test_it_serves_every_described_path(alice):
    run = launch(alice)
    api = Api(alice)
    for path, methods in get("/openapi.json").json()["paths"].items():
        url = path.replace("{id}", str(run.pk)).replace("{key}", "loss").replace("{name}", "mnist").replace("{version}", "1")
        for method in methods:
            call = getattr(api.client, method)
            response = call("/api/v1" + url, headers=api.headers) if method in ("get", "delete") else \
                call("/api/v1" + url, spec_yaml(), content_type="application/yaml", headers=api.headers)
            # Routed: an answer of the endpoint itself (even a 404 for a missing object), never the catch-all.
            assert response.status_code != 405, (method, path)
            if not response.streaming:
                assert b"no API endpoint at" not in response.content, (method, path)


def test_it_renders_the_docs_page(db):
    response = get("/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    for path, methods in SERVED_PATHS.items():
        for method in methods:
            assert f"{method.upper()} /api/v1{path}<" in page, (method, path)
    assert "/api/v1/openapi.json" in page


def test_it_reports_health_without_credentials(db):
    response = get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["executor"] in ("docker", "local")
    assert body["database"] == "postgresql"
    assert body["broker"] == "redis"


@pytest.mark.parametrize("path", ["/nope", "/runs/1/nope", "/runs/abc", "/"])
def test_it_answers_an_unknown_path_with_json_404(db, path):
    body = assert_error(get(path), 404)
    assert "no API endpoint" in body["detail"]
