"""/admin/ for staff and team admins (SPEC §5): a team admin manages their own
team's members, runs, datasets and secrets, and sees nothing of other teams."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from runs.models import Membership, Run, Team, TeamSecret
from runs.services import create_run
from tests.conftest import BUSYBOX, Api, _user, sign_in


def make_run(user, name: str) -> Run:
    # No worker in these tests: the run stays pending, which is all the admin needs.
    return create_run(user=user, source=f"name: {name}\nimage: {BUSYBOX}\nrun:\n  - command: 'true'\n", executor="local")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def two_teams(alice, charlie):
    return make_run(alice, "vision-run"), make_run(charlie, "speech-run")


def test_a_team_admin_sees_only_their_own_teams(tina, two_teams):
    ours, theirs = two_teams
    client = signed_in(tina)
    index = client.get("/admin/")
    assert index.status_code == 200
    page = index.content.decode()
    for shown in ("/admin/runs/run/", "/admin/runs/membership/", "/admin/runs/dataset/", "/admin/runs/teamsecret/", "/admin/runs/team/"):
        assert shown in page
    for hidden in ("/admin/runs/resourcepreset/", "/admin/runs/apitoken/", "/admin/auth/user/"):
        assert hidden not in page
    runs = client.get("/admin/runs/run/").content.decode()
    assert "vision-run" in runs and "speech-run" not in runs
    assert "speech" not in runs  # not even the other team's name, in the filters
    assert client.get(f"/admin/runs/run/{ours.pk}/change/").status_code == 200
    # Another team's run is as if it did not exist.
    assert client.get(f"/admin/runs/run/{theirs.pk}/change/").status_code == 302
    for forbidden in ("/admin/runs/resourcepreset/", "/admin/runs/apitoken/", "/admin/auth/user/"):
        assert client.get(forbidden).status_code == 403, forbidden


def test_members_and_viewers_stay_out(alice, viola):
    for user in (alice, viola):
        response = signed_in(user).get("/admin/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    refused = Client().post("/admin/login/?next=/admin/", {"username": "alice", "password": "pw-alice"})
    assert refused.status_code == 200
    assert "neither staff nor a team admin" in refused.content.decode()


def test_a_team_admin_signs_in_to_admin_and_finds_the_link(tina, alice):
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "tina", "password": "pw-tina"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert 'href="/admin/"' in client.get("/").content.decode()
    assert 'href="/admin/"' not in signed_in(alice).get("/").content.decode()


def test_a_team_admin_manages_their_teams_members(tina, charlie):
    client = signed_in(tina)
    vision, speech = Team.objects.get(name="vision"), Team.objects.get(name="speech")
    added = client.post("/admin/runs/membership/add/", {"user": charlie.pk, "team": vision.pk, "role": "viewer"})
    assert added.status_code == 302
    assert Membership.objects.get(user=charlie, team=vision).role == "viewer"
    # Another team is not a choice: the form says so and nothing is stored.
    bob_like = get_user_model().objects.create_user("newcomer", password="x")
    refused = client.post("/admin/runs/membership/add/", {"user": bob_like.pk, "team": speech.pk, "role": "admin"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert not Membership.objects.filter(user=bob_like).exists()
    # Nor can they touch the other team's memberships.
    charlie_in_speech = Membership.objects.get(user=charlie, team=speech)
    assert client.get(f"/admin/runs/membership/{charlie_in_speech.pk}/change/").status_code == 302
    client.post(f"/admin/runs/membership/{charlie_in_speech.pk}/delete/", {"post": "yes"})
    assert Membership.objects.filter(pk=charlie_in_speech.pk).exists()


def test_a_team_admin_sets_secrets_of_their_team_only(tina, charlie):
    client = signed_in(tina)
    vision, speech = Team.objects.get(name="vision"), Team.objects.get(name="speech")
    refused = client.post("/admin/runs/teamsecret/add/", {"team": speech.pk, "name": "WANDB_KEY", "value": "s3cr3t"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert not TeamSecret.objects.exists()
    stored = client.post("/admin/runs/teamsecret/add/", {"team": vision.pk, "name": "WANDB_KEY", "value": "s3cr3t"})
    assert stored.status_code == 302
    secret = TeamSecret.objects.get(team=vision, name="WANDB_KEY")
    assert b"s3cr3t" not in bytes(secret.ciphertext)
    assert "s3cr3t" not in client.get(f"/admin/runs/teamsecret/{secret.pk}/change/").content.decode()


def test_a_team_admin_terminates_their_teams_runs_only(tina, two_teams):
    ours, theirs = two_teams
    client = signed_in(tina)
    # Even with the other team's run id slipped into the form, only ours is acted on.
    client.post("/admin/runs/run/", {"action": "terminate", "_selected_action": [ours.pk, theirs.pk]})
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.status == "terminated" and ours.status_reason == "terminated by tina"
    assert theirs.status == "pending"


def limits_form(**changes) -> dict:
    return {"max_running": "", "credit_limit": "", "idle_limit_seconds": "", **changes}


def test_a_team_admin_sets_their_teams_limits(tina, charlie):
    client = signed_in(tina)
    vision, speech = Team.objects.get(name="vision"), Team.objects.get(name="speech")
    teams = client.get("/admin/runs/team/").content.decode()
    assert f"/admin/runs/team/{vision.pk}/change/" in teams and f"/admin/runs/team/{speech.pk}/change/" not in teams
    page = client.get(f"/admin/runs/team/{vision.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    assert set(form.fields) == {"max_running", "credit_limit", "idle_limit_seconds"}  # not the team's name

    # The name slipped into the form changes nothing: only the limits are theirs to set.
    saved = client.post(f"/admin/runs/team/{vision.pk}/change/",
                        limits_form(name="renamed", max_running="2", credit_limit="500.25", idle_limit_seconds="3600"))
    assert saved.status_code == 302, saved.context["adminform"].form.errors if saved.context else saved
    vision.refresh_from_db()
    assert (vision.name, vision.max_running, vision.credit_limit, vision.idle_limit_seconds) == ("vision", 2, Decimal("500.25"), 3600)
    # What the API reads back is what was set, and empty is "no limit".
    assert Api(tina).get("/teams/vision").json()["credit_limit"] == "500.2500"
    assert client.post(f"/admin/runs/team/{vision.pk}/change/", limits_form()).status_code == 302
    vision.refresh_from_db()
    assert (vision.max_running, vision.credit_limit, vision.idle_limit_seconds) == (None, None, None)

    # Another team's page is as if it did not exist, and posting to it changes nothing.
    assert client.get(f"/admin/runs/team/{speech.pk}/change/").status_code == 302
    client.post(f"/admin/runs/team/{speech.pk}/change/", limits_form(credit_limit="1"))
    assert Team.objects.get(name="speech").credit_limit is None
    # No new team, and no team deleted, by a team admin.
    assert client.get("/admin/runs/team/add/").status_code == 403
    assert client.post(f"/admin/runs/team/{vision.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Team.objects.filter(pk=vision.pk).exists()


def test_members_cannot_reach_the_limits(alice, viola, charlie):
    vision = Team.objects.get(name="vision")
    for user in (alice, viola, charlie):
        response = signed_in(user).post(f"/admin/runs/team/{vision.pk}/change/", limits_form(credit_limit="1"))
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), user
    assert Team.objects.get(name="vision").credit_limit is None


@pytest.mark.parametrize("field, value, says", [
    ("credit_limit", "-1", "greater than or equal to 0"),
    ("credit_limit", "ten", "Enter a number"),
    ("credit_limit", "NaN", "Enter a number"),
    ("credit_limit", "1.00001", "no more than 4 decimal places"),
    ("credit_limit", "1e20", "less than or equal to 9999999999.9999"),
    ("idle_limit_seconds", "0", "greater than or equal to 1"),
    ("idle_limit_seconds", "-5", "greater than or equal to 1"),
    ("idle_limit_seconds", "1.5", "Enter a whole number"),
    ("idle_limit_seconds", str(2**40), "less than or equal to 2147483647"),
    ("max_running", "-1", "greater than or equal to 0"),
    ("max_running", "many", "Enter a whole number"),
])
def test_a_bad_limit_is_refused_on_its_field_and_nothing_is_saved(tina, field, value, says):
    vision = Team.objects.get(name="vision")
    good = {"max_running": "3", "credit_limit": "50", "idle_limit_seconds": "600"}
    page = signed_in(tina).post(f"/admin/runs/team/{vision.pk}/change/", limits_form(**{**good, field: value}))
    assert page.status_code == 200  # the form again
    errors = page.context["adminform"].form.errors
    assert set(errors) == {field} and says in errors[field][0], errors
    vision.refresh_from_db()
    assert (vision.max_running, vision.credit_limit, vision.idle_limit_seconds) == (None, None, None)


def test_staff_see_every_team(two_teams):
    root = get_user_model().objects.create_superuser("root", password="pw-root")
    runs = signed_in(root).get("/admin/runs/run/").content.decode()
    assert "vision-run" in runs and "speech-run" in runs
    assert signed_in(root).get("/admin/runs/resourcepreset/").status_code == 200
    teams = signed_in(root).get("/admin/runs/team/").content.decode()
    for team in Team.objects.filter(name__in=["vision", "speech"]):
        assert f"/admin/runs/team/{team.pk}/change/" in teams
    # Staff name the team too, within the same checks.
    speech = Team.objects.get(name="speech")
    assert signed_in(root).post(f"/admin/runs/team/{speech.pk}/change/",
                                limits_form(name="speech-2", credit_limit="-1")).status_code == 200
    renamed = signed_in(root).post(f"/admin/runs/team/{speech.pk}/change/", {
        **limits_form(name="speech-2", idle_limit_seconds="60"),
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"})
    assert renamed.status_code == 302
    speech.refresh_from_db()
    assert (speech.name, speech.idle_limit_seconds, speech.credit_limit) == ("speech-2", 60, None)


def test_a_team_admin_uses_admin_in_the_browser(chromium, console_url, transactional_db, tina, charlie):
    make_run(tina, "tinas-run")
    make_run(charlie, "speech-run")
    page = sign_in(chromium, console_url, tina)
    try:
        page.page.get_by_role("link", name="Admin").click()
        page.page.click("a[href='/admin/runs/run/']")
        page.page.wait_for_url("**/admin/runs/run/")
        assert page.page.get_by_text("tinas-run").is_visible()
        assert "speech-run" not in page.page.content()
        page.screenshot("admin-team-admin-runs")
        # Their team's limits, set on its page.
        page.goto("/admin/runs/team/")
        page.page.get_by_role("link", name="vision").click()
        page.page.get_by_label("Credit limit").fill("250")
        page.page.get_by_role("button", name="Save", exact=True).click()
        page.page.wait_for_url("**/admin/runs/team/")
        assert Team.objects.get(name="vision").credit_limit == 250
        page.goto(f"/admin/runs/team/{Team.objects.get(name='vision').pk}/change/")
        page.screenshot("admin-team-admin-limits")
    finally:
        page.page.context.close()


def test_staff_register_a_cluster_and_bad_settings_are_refused_by_field(tina, defaults):
    from runs.models import Cluster

    root = signed_in(get_user_model().objects.create_superuser("root", password="pw-root"))
    form = {"name": "gpu", "kind": "swarm", "manager": "docker.example.org", "tls_dir": "", "registry": "https://r/x",
            "node_engines": '{"n1": "http://x"}', "node_engine_port": ""}
    page = root.post("/admin/runs/cluster/add/", form)
    assert page.status_code == 200  # the form again, with what is wrong by field
    errors = page.context["adminform"].form.errors
    assert set(errors) == {"manager", "registry", "node_engines"}
    assert "is not a Docker endpoint" in errors["manager"][0]
    assert not Cluster.objects.filter(name="gpu").exists()
    form.update(manager="tcp://manager.example.org:2376", registry="registry.example.org:5000",
                node_engines='{"n1": "tcp://10.0.0.11:2376"}', node_engine_port="2376")
    assert root.post("/admin/runs/cluster/add/", form).status_code == 302
    assert Cluster.objects.get(name="gpu").node_engines == {"n1": "tcp://10.0.0.11:2376"}
    # A team admin who is not staff does not see clusters at all.
    assert signed_in(tina).get("/admin/runs/cluster/").status_code == 403


def test_the_nav_offers_usage_and_admin_to_admins_and_staff_only(alice, tina):
    """A member sees neither link; a team admin sees both, Usage for their first team
    by name; staff who administer no team see Admin alone."""
    otto = _user("otto", "speech", role="admin")
    Team.objects.get_or_create(name="aardvark")
    Membership.objects.create(user=otto, team=Team.objects.get(name="aardvark"), role="admin")
    staff = get_user_model().objects.create_user("stella", password="pw-stella", is_staff=True)
    Membership.objects.create(user=staff, team=Team.objects.get(name="vision"), role="member")

    def nav(user) -> list[str]:
        page = signed_in(user).get("/").content.decode()
        return re.findall(r'<a href="([^"]+)">(?:Usage|Admin)</a>', page)

    assert nav(alice) == []
    assert nav(tina) == ["/teams/vision/usage/", "/admin/"]
    assert nav(otto) == ["/teams/aardvark/usage/", "/admin/"]
    assert nav(staff) == ["/admin/"]
