"""Who reaches what (runs.access): a persona matrix over every API endpoint, page,
file download, admin page and websocket (ISSUE 7 §1, SPEC §3, §5, §6).

The personas, around alice's team `vision` and its runs:
  alice  owner of the runs, a member        bob    a teammate (member)
  viola  a viewer                           tina   the team's admin
  charlie  an outsider (member of `speech`) otto   `speech`'s admin
  remy   removed from `vision`, his token still valid
  dora   a deactivated member               root   a superuser in no team

Each gets exactly what its role allows: readers read; members, admins and the
superuser change; only admins and the superuser administer; everyone outside the
team gets what a missing object gets (404); the deactivated user gets nothing at
all (401, or the sign-in page). Nobody gains a membership by asking. A new
endpoint is one row of a table below.
"""

import copy
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone

from runs import metrics
from runs.datasets import create_version
from runs.lifecycle import transition
from runs.models import ApiToken, DatasetVersion, LogChunk, Membership, ResourcePreset, Run, RunFile, Team, TeamSecret
from runs.spec import parse_spec
from runs.team_secrets import set_secret
from tests.conftest import BUSYBOX, FAST_HASHERS, _user, make_defaults
from tests.test_reproducible import tar_gz

READ, CHANGE, ADMINISTER = "read", "change", "administer"
PERSONAS = ["alice", "bob", "viola", "tina", "charlie", "otto", "remy", "dora", "root"]
READERS = {"alice", "bob", "viola", "tina", "root"}
WRITERS = {"alice", "bob", "tina", "root"}
ADMINS = {"tina", "root"}
OUTSIDERS = {"charlie", "otto", "remy"}


def expected(persona: str, action: str) -> str:
    """allowed, refused (a teammate whose role forbids it: 403), hidden (404) or anonymous (401)."""
    if persona == "dora":
        return "anonymous"
    if persona in OUTSIDERS:
        return "hidden"
    allowed = {READ: READERS, CHANGE: WRITERS, ADMINISTER: ADMINS}[action]
    return "allowed" if persona in allowed else "refused"


def spec_yaml(name="access-run") -> str:
    return yaml.safe_dump({"name": name, "image": BUSYBOX, "run": [{"command": "echo hi"}]})


@dataclass
class World:
    users: dict
    run: Run  # pending, with a log, a metric and exported files
    done: Run  # completed: it can be reproduced
    secret: TeamSecret
    dataset_version: DatasetVersion

    def fingerprint(self) -> tuple:
        """What a refused request must leave as it was."""
        vision = Team.objects.get(name="vision")
        return (
            list(Run.objects.order_by("pk").values_list("pk", "status")),
            list(DatasetVersion.objects.order_by("pk").values_list("pk", "removed_at")),
            list(TeamSecret.objects.order_by("pk").values_list("pk", "name", "updated_at")),
            vision.max_running,
            Membership.objects.count(),
            list(Membership.objects.order_by("pk").values_list("user_id", "team_id", "role")),
        )


def quiet_run(user, name: str, team: str = "vision") -> Run:
    """A pending run as create_run stores it, but queued nowhere: a live worker
    left by an earlier test must not start it under this one."""
    spec = parse_spec(spec_yaml(name))
    return Run.objects.create(name=name, spec=spec, image=spec["image"], owner=user, team=Team.objects.get(name=team),
                              preset=ResourcePreset.objects.get(name=spec["resources"]["preset"]), executor="local")


def store_file(run: Run, path: str, content: bytes) -> RunFile:
    name = default_storage.save(f"test-access/{run.pk}/{path.rsplit('/', 1)[-1]}", ContentFile(content))
    return RunFile.objects.create(run=run, path=path, storage_name=name, size=len(content), sha256=hashlib.sha256(content).hexdigest())


def make_world(vision_cap: int | None = None) -> World:
    """Two teams, their members in every role, and vision's runs, files and secrets.
    `vision_cap`: vision's max_running, set before its runs exist (a worker left by an
    earlier test starts a pending run as soon as a finished one frees its slot)."""
    users = {
        "alice": _user("alice", "vision"),
        "bob": _user("bob", "vision"),
        "viola": _user("viola", "vision", role="viewer"),
        "tina": _user("tina", "vision", role="admin"),
        "charlie": _user("charlie", "speech"),
        "otto": _user("otto", "speech", role="admin"),
        "remy": _user("remy", "vision"),
        "dora": _user("dora", "vision"),
    }
    if vision_cap is not None:
        Team.objects.filter(name="vision").update(max_running=vision_cap)
    root = get_user_model().objects.create_superuser("root", password="pw-root")
    root.token = ApiToken.issue(root)[1]
    users["root"] = root
    alice, vision = users["alice"], Team.objects.get(name="vision")
    run = quiet_run(alice, "vision-run")
    LogChunk.objects.create(run=run, first_line=1, line_count=2, lines=[[1.0, 0, "hello from vision"], [2.0, 0, "bye"]])
    Run.objects.filter(pk=run.pk).update(log_lines=2)
    metrics.metric_chunk(run.pk, "loss", [(1, 0.5, 1.0), (2, 0.25, 2.0)]).save()
    store_file(run, "/output/hello.txt", b"hello, vision\n")
    store_file(run, "/output/plot.png", b"\x89PNG not really")
    done = quiet_run(alice, "vision-done")
    for status in ("initializing", "running", "stopping", "completed"):
        done = transition(done.pk, status)
    secret = set_secret(vision, "WANDB_KEY", "vision-secret-value", alice)
    version, _ = create_version(vision, "numbers", tar_gz({"n.txt": b"1 2 3"}), "application/gzip", alice)
    # remy leaves the team with his token in his pocket; dora is switched off.
    Membership.objects.filter(user=users["remy"]).delete()
    users["dora"].is_active = False
    users["dora"].save()
    return World(users=users, run=Run.objects.get(pk=run.pk), done=done, secret=secret, dataset_version=version)


@pytest.fixture(scope="module")
def world_once(django_db_setup, django_db_blocker):
    """The world, made once for the module's database tests (about 900 cases), in a
    transaction rolled back at the end. Each test runs in a savepoint of its own inside
    it (pytest-django's `db`), as Django's TestCase.setUpTestData does, so what one test
    changes the next never sees. pytest-django runs a module's database tests together,
    before every transactional test: those never run inside this transaction."""
    from django.db import transaction
    from django.test.utils import override_settings

    with django_db_blocker.unblock(), override_settings(PASSWORD_HASHERS=FAST_HASHERS):
        outer = transaction.atomic()
        outer.__enter__()
        try:
            make_defaults()
            yield make_world()
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def world(world_once, defaults) -> World:
    return copy.deepcopy(world_once)  # a test may change its copy's objects, never the next test's


# ---------------------------------------------------------------- API v1

# (method, path, body, content type, action, status when allowed)
API = [
    ("GET", "/runs/{run}", None, None, READ, 200),
    ("GET", "/runs/{run}/events", None, None, READ, 200),
    ("GET", "/runs/{run}/logs", None, None, READ, 200),
    ("GET", "/runs/{run}/logs.txt", None, None, READ, 200),
    ("GET", "/runs/{run}/logs/search?q=hello", None, None, READ, 200),
    ("GET", "/runs/{run}/metrics", None, None, READ, 200),
    ("GET", "/runs/{run}/metrics/loss", None, None, READ, 200),
    ("GET", "/runs/{run}/files", None, None, READ, 200),
    ("GET", "/runs/{run}/files/raw?path=/output/hello.txt", None, None, READ, 200),
    ("POST", "/runs/{run}/terminate", None, None, CHANGE, 202),
    ("POST", "/runs/{done}/reproduce", None, None, CHANGE, 201),
    ("POST", "/runs?team=vision", spec_yaml(), "application/yaml", CHANGE, 201),
    ("GET", "/datasets?team=vision", None, None, READ, 200),
    ("GET", "/datasets/numbers/versions?team=vision", None, None, READ, 200),
    ("POST", "/datasets/numbers/versions?team=vision", tar_gz({"n.txt": b"4 5 6"}).getvalue(), "application/gzip", CHANGE, 201),
    ("DELETE", "/datasets/numbers/versions/1?team=vision", None, None, CHANGE, 200),
    ("POST", "/code?team=vision", tar_gz({"train.py": b"print(1)"}).getvalue(), "application/gzip", CHANGE, 201),
    ("GET", "/secrets?team=vision", None, None, READ, 200),
    ("PUT", "/secrets/WANDB_KEY?team=vision", json.dumps({"value": "rotated"}), "application/json", CHANGE, 200),
    ("DELETE", "/secrets/WANDB_KEY?team=vision", None, None, CHANGE, 200),
    ("GET", "/teams/vision", None, None, READ, 200),
    ("PATCH", "/teams/vision", json.dumps({"max_running": 3}), "application/json", ADMINISTER, 200),
]


def call(user, method: str, path: str, body=None, content_type=None, client=None):
    client = client or Client()
    headers = {"Authorization": f"Bearer {user.token}"} if user is not None else {}
    kwargs = {"headers": headers}
    if body is not None:
        kwargs.update(data=body, content_type=content_type)
    elif method != "GET":
        kwargs.update(data="", content_type="application/json")  # no body at all, not an empty form
    return getattr(client, method.lower())("/api/v1" + path, **kwargs)


def fill(path: str, world: World, run_id: int | None = None) -> str:
    return path.format(run=run_id or world.run.pk, done=run_id or world.done.pk)


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("method, path, body, content_type, action, ok", API, ids=[f"{m} {p}" for m, p, *_ in API])
def test_the_api_gives_each_persona_what_its_role_allows(world, persona, method, path, body, content_type, action, ok):
    user = world.users[persona]
    before = world.fingerprint()
    response = call(user, method, fill(path, world), body, content_type)
    outcome = expected(persona, action)
    if outcome == "allowed":
        assert response.status_code == ok, response.content
        return
    status = {"refused": 403, "hidden": 404, "anonymous": 401}[outcome]
    assert response.status_code == status, response.content
    body_json = response.json()
    assert set(body_json) == {"detail", "errors"} and body_json["detail"]
    assert world.fingerprint() == before  # nothing changed, no membership gained
    if outcome == "hidden" and ("{run}" in path or "{done}" in path):
        # Another team's run answers exactly as a run that does not exist.
        missing = call(user, method, fill(path, world, run_id=world.done.pk + 1000), body, content_type)
        assert (missing.status_code, missing.json()) == (response.status_code, body_json)


@pytest.mark.parametrize("persona", PERSONAS)
def test_lists_show_each_persona_only_its_teams(world, persona):
    user = world.users[persona]
    runs = call(user, "GET", "/runs")
    if persona == "dora":
        assert runs.status_code == 401
        return
    ids = {item["id"] for item in runs.json()["items"]}
    teams = {item["name"]: item["role"] for item in call(user, "GET", "/teams").json()["items"]}
    datasets = [item["name"] for item in call(user, "GET", "/datasets").json()["items"]]
    secrets = [item["name"] for item in call(user, "GET", "/secrets").json()["items"]]
    if persona in READERS:
        assert {world.run.pk, world.done.pk} <= ids
        assert "vision" in teams
    else:
        assert not ids & {world.run.pk, world.done.pk}
        assert "vision" not in teams
    if persona in READERS - {"root"}:  # their default team is vision
        assert datasets == ["numbers"] and secrets == ["WANDB_KEY"]
        assert teams["vision"] == world.users[persona].memberships.get().role
    if persona == "remy":  # in no team: empty lists, nothing else
        assert (ids, teams, datasets, secrets) == (set(), {}, [], [])
        assert not Membership.objects.filter(user=world.users["remy"]).exists()
    if persona == "root":  # every team, though a member of none
        assert {"speech", "vision"} <= set(teams) and set(teams.values()) == {None}


def test_a_removed_user_with_a_valid_token_gets_nothing_and_no_membership(world):
    remy = world.users["remy"]
    before = Membership.objects.count()
    for method, path, body, content_type, _, _ in API:
        response = call(remy, method, fill(path, world), body, content_type)
        assert response.status_code == 404, (method, path, response.content)
    created = call(remy, "POST", "/runs", spec_yaml(), "application/yaml")
    assert created.status_code == 403
    assert "team" in [error["loc"] for error in created.json()["errors"]]
    for path in ("/datasets/numbers/versions", "/code"):
        refused = call(remy, "POST", path, tar_gz({"x": b"1"}).getvalue(), "application/gzip")
        assert refused.status_code == 403 and refused.json()["errors"][0]["loc"] == "team"
    assert call(remy, "GET", "/datasets/numbers/versions").status_code == 404
    assert call(remy, "GET", "/runs").json()["items"] == []
    assert Membership.objects.count() == before
    assert not Membership.objects.filter(user=remy).exists()
    assert Run.objects.filter(owner=remy).count() == 0


def test_a_deactivated_user_is_refused_everywhere(world):
    dora = world.users["dora"]
    for method, path, body, content_type, _, _ in API:
        response = call(dora, method, fill(path, world), body, content_type)
        assert response.status_code == 401, (method, path)
        assert response.json()["detail"] == "invalid or revoked token"
    client = Client()
    client.force_login(dora)
    assert client.get(f"/runs/{world.run.pk}/").status_code == 302  # the session is no good either
    assert call(None, "GET", "/runs", client=client).status_code == 401


def test_a_viewer_is_told_what_their_role_cannot_do(world):
    refused = call(world.users["viola"], "POST", f"/runs/{world.run.pk}/terminate")
    assert refused.status_code == 403 and "viewers cannot" in refused.json()["detail"]
    launch = call(world.users["viola"], "POST", "/runs", spec_yaml(), "application/yaml")
    assert launch.status_code == 403 and "viewers cannot" in launch.json()["detail"]


def test_a_launch_without_a_team_goes_to_the_users_first_team_where_they_may(world):
    viola, vision = world.users["viola"], Team.objects.get(name="vision")
    Membership.objects.create(user=viola, team=Team.objects.get(name="speech"), role="member")
    created = call(viola, "POST", "/runs", spec_yaml(), "application/yaml")
    assert created.status_code == 201 and created.json()["team"] == "speech"
    root = call(world.users["root"], "POST", "/runs", spec_yaml(), "application/yaml")
    assert root.status_code == 403 and root.json()["errors"][0]["loc"] == "team"
    assert call(world.users["root"], "POST", "/runs?team=vision", spec_yaml(), "application/yaml").json()["team"] == vision.name


# ---------------------------------------------------------------- teams


def test_a_team_shows_its_settings_and_live_runs(world):
    body = call(world.users["viola"], "GET", "/teams/vision").json()
    assert body == {"name": "vision", "role": "viewer", "max_running": None, "credit_limit": None, "idle_limit_seconds": None,
                    "usage": {"pending": 1, "initializing": 0, "running": 0, "stopping": 0, "idle": 0, "credits": "0.0000",
                              "credits_by_status": {"initializing": "0.0000", "running": "0.0000", "idle": "0.0000"}}}


@pytest.mark.parametrize("value", [0, 7, None])
def test_a_team_admin_sets_max_running(world, value):
    response = call(world.users["tina"], "PATCH", "/teams/vision", json.dumps({"max_running": value}), "application/json")
    assert response.status_code == 200 and response.json()["max_running"] == value
    assert Team.objects.get(name="vision").max_running == value


@pytest.mark.parametrize("body, loc", [
    ({"max_running": -1}, "max_running"),
    ({"max_running": 1.5}, "max_running"),
    ({"max_running": "3"}, "max_running"),
    ({"max_running": True}, "max_running"),
    ({"max_running": 2**40}, "max_running"),
    ({"credit_limit": 10}, "credit_limit"),
    ([1], ""),
])
def test_a_bad_team_setting_is_a_400_naming_the_field(world, body, loc):
    response = call(world.users["tina"], "PATCH", "/teams/vision", json.dumps(body), "application/json")
    assert response.status_code == 400, response.content
    assert loc in [error["loc"] for error in response.json()["errors"]]
    assert Team.objects.get(name="vision").max_running is None


@pytest.mark.parametrize("body, status", [("{", 400), ("[" * 100_000, 400), ("max_running=3", 415)])
def test_a_broken_team_body_is_a_4xx(world, body, status):
    content_type = "application/x-www-form-urlencoded" if status == 415 else "application/json"
    response = call(world.users["tina"], "PATCH", "/teams/vision", body, content_type)
    assert response.status_code == status, response.content


# ---------------------------------------------------------------- tokens


def test_a_user_creates_lists_and_revokes_their_tokens(world):
    alice = world.users["alice"]
    created = call(alice, "POST", "/tokens", json.dumps({"name": "laptop", "expires_in_days": 30}), "application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == {"id", "name", "prefix", "created_at", "expires_at", "last_used_at", "token"}
    assert body["name"] == "laptop" and body["token"].startswith(body["prefix"])
    assert created["Location"] == f"/api/v1/tokens/{body['id']}"
    new = type("Holder", (), {"token": body["token"]})
    listed = call(new, "GET", "/tokens").json()["items"]  # the new token works
    assert {item["name"] for item in listed} == {"", "laptop"}
    assert all("token" not in item and set(item) == {"id", "name", "prefix", "created_at", "expires_at", "last_used_at"} for item in listed)
    assert body["token"] not in json.dumps(listed)
    laptop = next(item for item in listed if item["name"] == "laptop")
    assert laptop["last_used_at"] is not None and laptop["expires_at"] is not None
    assert call(alice, "DELETE", f"/tokens/{body['id']}").status_code == 204
    assert call(new, "GET", "/runs").status_code == 401
    assert [item["name"] for item in call(alice, "GET", "/tokens").json()["items"]] == [""]


def test_another_users_token_cannot_be_seen_or_revoked(world):
    alice, bob = world.users["alice"], world.users["bob"]
    bobs = bob.api_tokens.get()
    assert call(alice, "DELETE", f"/tokens/{bobs.pk}").status_code == 404
    assert call(alice, "DELETE", "/tokens/999999").status_code == 404
    assert bobs.pk not in [item["id"] for item in call(alice, "GET", "/tokens").json()["items"]]
    assert call(bob, "GET", "/runs").status_code == 200


def test_an_expired_token_is_refused_saying_so(world):
    alice = world.users["alice"]
    ApiToken.objects.filter(user=alice).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = call(alice, "GET", "/runs")
    assert response.status_code == 401 and response.json()["detail"] == "token expired"
    ApiToken.objects.filter(user=alice).update(expires_at=timezone.now() + timedelta(days=1))
    assert call(alice, "GET", "/runs").status_code == 200


@pytest.mark.parametrize("body, loc", [
    ({"expires_in_days": 0}, "expires_in_days"),
    ({"expires_in_days": "30"}, "expires_in_days"),
    ({"expires_in_days": 100_000}, "expires_in_days"),
    ({"name": "x" * 101}, "name"),
    ({"name": 3}, "name"),
    ({"secret": "mine"}, "secret"),
])
def test_a_bad_token_request_is_a_400_naming_the_field(world, body, loc):
    alice = world.users["alice"]
    response = call(alice, "POST", "/tokens", json.dumps(body), "application/json")
    assert response.status_code == 400 and loc in [error["loc"] for error in response.json()["errors"]]
    assert alice.api_tokens.count() == 1


def test_createtoken_names_and_expires_a_token(db, defaults):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("createtoken", "newbie", "--name", "ci", "--expires-days", "2", stdout=out)
    token = ApiToken.objects.get(user__username="newbie")
    assert token.name == "ci" and timedelta(days=1) < token.expires_at - timezone.now() <= timedelta(days=2)
    # No --team: a user in no team joins `default`, explicitly, here and nowhere else.
    assert list(Membership.objects.filter(user__username="newbie").values_list("team__name", "role")) == [("default", "member")]
    assert out.getvalue().strip().splitlines()[-1].startswith("ry_")
    with pytest.raises(CommandError, match="--expires-days"):
        call_command("createtoken", "newbie", "--expires-days", "0", stdout=StringIO())
    assert ApiToken.objects.filter(user__username="newbie").count() == 1


def test_the_tokens_page_creates_lists_and_revokes(world):
    alice = world.users["alice"]
    client = Client()
    client.force_login(alice)
    assert 'href="/account/tokens/"' in client.get("/").content.decode()
    page = client.get("/account/tokens/")
    assert page.status_code == 200 and alice.api_tokens.get().prefix in page.content.decode()
    created = client.post("/account/tokens/", {"name": "notebook", "expires_in_days": "7"})
    assert created.status_code == 201
    token = alice.api_tokens.get(name="notebook")
    html = created.content.decode()
    secret = html.split('<code class="token-secret">')[1].split("</code>")[0]
    assert ApiToken.digest_of(secret) == token.digest  # shown once, and it is the real one
    assert secret not in client.get("/account/tokens/").content.decode()
    assert "<script" not in html.split("<main")[1]
    bad = client.post("/account/tokens/", {"name": "x", "expires_in_days": "-3"})
    assert bad.status_code == 400 and "expires_in_days" in bad.content.decode()
    revoked = client.post(f"/account/tokens/{token.pk}/revoke/")
    assert revoked.status_code == 302 and not ApiToken.objects.filter(pk=token.pk).exists()
    bobs = world.users["bob"].api_tokens.get()
    assert client.post(f"/account/tokens/{bobs.pk}/revoke/").status_code == 404
    assert ApiToken.objects.filter(pk=bobs.pk).exists()
    assert client.get(f"/account/tokens/{bobs.pk}/revoke/").status_code == 405


def test_the_tokens_page_needs_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["alice"])
    assert client.post("/account/tokens/", {"name": "sneaky"}).status_code == 403
    assert not ApiToken.objects.filter(name="sneaky").exists()


# ---------------------------------------------------------------- pages and file downloads

FILE = "path=/output/hello.txt"
# (method, path, headers, action, status when allowed, status when refused)
PAGES = [
    ("GET", "/runs/{run}/", {}, READ, 200, None),
    ("GET", "/runs/{run}/row/", {}, READ, 200, None),
    ("GET", "/runs/{run}/head/", {}, READ, 200, None),
    ("GET", "/runs/{run}/logs/", {}, READ, 200, None),
    ("GET", "/runs/{run}/plots/", {}, READ, 200, None),
    ("GET", "/runs/{run}/terminal/", {}, READ, 200, None),
    ("GET", "/runs/{run}/files/", {}, READ, 200, None),
    ("GET", "/runs/{run}/files/tree/", {}, READ, 200, None),
    ("GET", f"/runs/{{run}}/files/preview/?{FILE}", {"HX-Request": "true"}, READ, 200, None),
    ("GET", f"/runs/{{run}}/files/download/?{FILE}", {}, READ, 200, None),
    ("GET", "/runs/{run}/files/image/?path=/output/plot.png", {}, READ, 200, None),
    ("GET", "/runs/{run}/files/all.zip", {}, READ, 200, None),
    ("GET", "/runs/{done}/reproduce/", {}, READ, 200, None),
    ("POST", "/runs/{run}/terminate/", {}, CHANGE, 302, 302),  # refused: back to the run, saying why
    ("POST", "/runs/{done}/reproduce/", {}, CHANGE, 302, 400),
]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("method, path, headers, action, ok, refused", PAGES, ids=[f"{m} {p}" for m, p, *_ in PAGES])
def test_the_pages_give_each_persona_what_its_role_allows(world, persona, method, path, headers, action, ok, refused):
    client = Client()
    client.force_login(world.users[persona])
    before = world.fingerprint()
    response = getattr(client, method.lower())(fill(path, world), headers=headers)
    outcome = expected(persona, action)
    if outcome == "allowed":
        assert response.status_code == ok
        if response.streaming:
            assert b"".join(response.streaming_content)
        return
    if outcome == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    else:
        assert response.status_code == (refused if outcome == "refused" else 404)
    assert world.fingerprint() == before


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_runs_page_lists_only_the_personas_teams(world, persona):
    client = Client()
    client.force_login(world.users[persona])
    response = client.get("/")
    if persona == "dora":
        assert response.status_code == 302
        return
    page = response.content.decode()
    assert ("vision-run" in page) == (persona in READERS)
    new = client.get("/runs/new/").content.decode()
    assert ("no team yet" in new) == (persona in {"remy", "root"})
    assert ("you cannot launch runs" in new) == (persona == "viola")
    assert Membership.objects.filter(user=world.users[persona]).count() == (0 if persona in {"remy", "root"} else 1)


def test_a_removed_user_cannot_launch_from_the_page_and_joins_nothing(world):
    client = Client()
    client.force_login(world.users["remy"])
    response = client.post("/runs/new/", {"spec": spec_yaml()})
    assert response.status_code == 400 and "no team" in response.content.decode()
    assert not Run.objects.filter(owner=world.users["remy"]).exists()
    assert not Membership.objects.filter(user=world.users["remy"]).exists()


# ---------------------------------------------------------------- admin

ADMIN = [
    "/admin/runs/run/{run}/change/",
    "/admin/runs/teamsecret/{secret}/change/",
    "/admin/runs/dataset/{dataset}/change/",
    "/admin/runs/membership/{membership}/change/",
    "/admin/runs/team/{team}/change/",
]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("path", ADMIN)
def test_admin_pages_are_for_the_teams_admins_and_staff(world, persona, path):
    client = Client()
    client.force_login(world.users[persona])
    url = path.format(run=world.run.pk, secret=world.secret.pk, dataset=world.dataset_version.dataset_id,
                      membership=world.users["alice"].memberships.get().pk, team=world.run.team_id)
    response = client.get(url)
    if persona in ADMINS:
        assert response.status_code == 200
    elif persona == "otto":  # an admin, of another team: as if it did not exist
        assert response.status_code == 302 and response["Location"] == "/admin/"
    else:
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("persona", ["tina", "otto", "root"])
def test_admin_lists_show_a_team_admin_only_their_team(world, persona):
    client = Client()
    client.force_login(world.users[persona])
    page = client.get("/admin/runs/run/").content.decode()
    assert ("vision-run" in page) == (persona != "otto")


def test_a_removed_team_admin_loses_the_admin(world):
    tina = world.users["tina"]
    client = Client()
    client.force_login(tina)
    assert client.get("/admin/").status_code == 200
    Membership.objects.filter(user=tina).delete()
    assert client.get("/admin/").status_code == 302
    assert client.get(f"/admin/runs/run/{world.run.pk}/change/").status_code == 302


@pytest.mark.parametrize("persona", PERSONAS)
def test_a_code_snapshot_is_reached_through_its_team(world, persona):
    from runs import access
    from runs.datasets import create_code_snapshot
    from runs.models import CodeSnapshot

    snapshot, _ = create_code_snapshot(Team.objects.get(name="vision"), tar_gz({"train.py": b"print(2)"}), "application/gzip", world.users["alice"])
    content_hash = snapshot.archive.content_hash
    user = world.users[persona]
    outcome = expected(persona, READ)
    if outcome == "allowed":
        assert access.code_snapshot_for_user(user, "vision", content_hash) == snapshot
    else:
        with pytest.raises((CodeSnapshot.DoesNotExist, Team.DoesNotExist)):
            access.code_snapshot_for_user(user, "vision", content_hash)
