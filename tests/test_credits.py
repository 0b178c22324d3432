"""Credits per status, a team's credit and idle limits, and its usage page (SPEC §1, §3)."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from runs import slots
from runs.models import Run, RunEvent, Team
from runs.services import create_run, terminate_run
from tests.conftest import BUSYBOX, Api, sign_in, wait_for, wait_until
from tests.test_engine import spec

RATE = Decimal(3600)  # the preset `tiny`: one credit a second


def patch_team(user, body, name="vision"):
    return Client().patch(f"/api/v1/teams/{name}", json.dumps(body), content_type="application/json",
                          headers={"Authorization": f"Bearer {user.token}"})


def seconds(start, end) -> Decimal:
    return Decimal((end - start).total_seconds())


def finished_run(user, *, initializing: float, running: float, idle: float, days_ago: float = 0) -> Run:
    """A run that ended `days_ago`, having spent these seconds in each status, as the
    engine stamps them (for usage sums that need no container)."""
    end = timezone.now() - timedelta(days=days_ago)
    idle_at = end - timedelta(seconds=idle) if idle else None
    started_at = (idle_at or end) - timedelta(seconds=running)
    initializing_at = started_at - timedelta(seconds=initializing)
    return Run.objects.create(
        name="billed", spec={}, image=BUSYBOX, owner=user, team=user.memberships.get().team,
        preset_id=_tiny(), executor="docker", status="terminated",
        initializing_at=initializing_at, started_at=started_at, idle_at=idle_at, finished_at=end,
        created_at=initializing_at, container_removed_at=end,
    )


def _tiny() -> int:
    from runs.models import ResourcePreset

    return ResourcePreset.objects.get(name="tiny").pk


# ---------------------------------------------------------------- billing on a real run


def test_a_run_is_billed_per_second_in_each_status(alice, engine, docker_engine):
    run = create_run(user=alice, source=spec("sleep 3", resources={"preset": "tiny"}, termination_protection=True),
                     executor="docker")
    run = wait_for(run.pk, "idle", timeout=90)
    wait_until(lambda: Run.objects.get(pk=run.pk).seconds_by_status["idle"] >= 2, 30, "two idle seconds")
    terminate_run(run, actor=alice)
    run = wait_for(run.pk, "terminated", removed=True)

    split = run.credits_by_status
    # One credit a second: each status costs exactly its stored span, to the ten-thousandth.
    expected = {
        "initializing": seconds(run.initializing_at, run.started_at),
        "running": seconds(run.started_at, run.idle_at),
        "idle": seconds(run.idle_at, run.finished_at),
    }
    for status, amount in expected.items():
        assert abs(split[status] - amount) <= Decimal("0.0001"), (status, split, expected)
    assert split["running"] >= Decimal("2.5") and split["idle"] >= Decimal(2) and split["initializing"] > 0
    assert run.credits == sum(split.values())

    body = Api(alice).get(f"/runs/{run.pk}").json()
    assert body["credits_by_status"] == {status: str(amount) for status, amount in split.items()}
    assert Decimal(body["credits"]) == sum(Decimal(v) for v in body["credits_by_status"].values())
    # The team's usage counts it, status by status.
    usage = Api(alice).get("/teams/vision").json()["usage"]
    assert usage["credits_by_status"] == body["credits_by_status"] and usage["credits"] == body["credits"]


# ---------------------------------------------------------------- the credit limit


def test_a_team_at_its_credit_limit_cannot_start_a_run(alice, tina):
    finished_run(alice, initializing=2, running=5, idle=3)  # 10 credits
    assert patch_team(tina, {"credit_limit": "10"}).status_code == 200

    refused = Api(alice).post("/runs", spec("echo hi"))
    assert refused.status_code == 400, refused.content
    body = refused.json()
    assert [error["loc"] for error in body["errors"]] == ["team.credit_limit"]
    assert "credit limit of 10" in body["detail"] and "10.0000" in body["detail"]
    assert not Run.objects.filter(name="engine-test").exists()

    assert patch_team(tina, {"credit_limit": "10.5"}).status_code == 200
    assert Api(alice).post("/runs", spec("echo hi")).status_code == 201


def test_a_creation_racing_a_lowered_limit_is_refused(transactional_db, alice, tina):
    """Two connections to PostgreSQL: a team admin's change of the limit, still in its
    transaction (the admin's save holds the team's row until it commits), and alice's
    creation meanwhile. The creation waits for the row and honours the new limit."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection, connections, transaction

    from runs.services import CreditLimitReached

    finished_run(alice, initializing=1, running=2, idle=0)  # 3 credits used, no limit yet
    team = Team.objects.get(name="vision")
    changed, release = threading.Event(), threading.Event()

    def admin_lowers_the_limit():
        try:
            with transaction.atomic():
                Team.objects.filter(pk=team.pk).update(credit_limit=Decimal(3))
                changed.set()
                assert release.wait(30)
        finally:
            connections.close_all()

    def alice_creates():
        try:
            return create_run(user=alice, source=spec("echo hi"), executor="docker")
        finally:
            connections.close_all()

    def creation_waits_for_the_row() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock' AND query ILIKE %s", ["%FOR UPDATE%"])
            return cursor.fetchone()[0] == 1

    with ThreadPoolExecutor(2) as pool:
        lowering = pool.submit(admin_lowers_the_limit)
        assert changed.wait(30)
        creating = pool.submit(alice_creates)
        try:
            wait_until(creation_waits_for_the_row, 30, "the creation waiting for the team's row")
        finally:
            release.set()
        lowering.result(30)
        with pytest.raises(CreditLimitReached) as refused:
            creating.result(30)
    assert "credit limit of 3.0000" in refused.value.detail
    assert not Run.objects.filter(name="engine-test").exists()


def test_a_pending_run_of_a_team_at_its_limit_waits_saying_why(alice):
    waiting = create_run(user=alice, source=spec("echo hi"), executor="docker")
    finished_run(alice, initializing=1, running=1, idle=0)
    Team.objects.filter(name="vision").update(credit_limit=Decimal(2))
    plan = slots.plan_slots()
    assert waiting.pk not in plan.admitted
    assert plan.waiting[waiting.pk] == "waiting: team vision has used its credit limit of 2.0000 credits"


# ---------------------------------------------------------------- the idle limit


def test_an_idle_run_past_the_idle_limit_is_terminated(alice, tina, browser, docker_engine):
    assert patch_team(tina, {"idle_limit_seconds": 6}).json()["idle_limit_seconds"] == 6
    run = create_run(user=alice, source=spec("echo done", termination_protection=True), executor="docker")
    wait_for(run.pk, "idle", timeout=90)
    browser.goto(f"/runs/{run.pk}/")
    banner = browser.page.locator("#idle-billing")
    assert "still billing" in banner.inner_text() and "idle limit terminates it at" in banner.inner_text()
    assert "Idle" in browser.page.locator("#credits-by-status").inner_text()
    browser.screenshot("idle-billing")
    page = Client()
    page.force_login(alice)

    run = wait_for(run.pk, "terminated", timeout=60, removed=True)  # the reconciler, every 2 s here
    assert run.status_reason == "idle timeout"
    last = RunEvent.objects.filter(run=run).last()
    assert (last.from_status, last.to_status, last.actor_name, last.reason) == ("idle", "terminated", "system", "idle timeout")
    assert seconds(run.idle_at, run.finished_at) >= 6
    assert "still billing" not in page.get(f"/runs/{run.pk}/").content.decode()


# ---------------------------------------------------------------- who sets the limits, and how


def test_a_team_admin_sets_and_clears_the_limits(tina):
    body = patch_team(tina, {"credit_limit": "500.25", "idle_limit_seconds": 3600}).json()
    assert body["credit_limit"] == "500.2500" and body["idle_limit_seconds"] == 3600
    team = Team.objects.get(name="vision")
    assert team.credit_limit == Decimal("500.25") and team.idle_limit_seconds == 3600
    cleared = patch_team(tina, {"credit_limit": None, "idle_limit_seconds": None}).json()
    assert cleared["credit_limit"] is None and cleared["idle_limit_seconds"] is None


def test_a_member_cannot_set_the_limits(alice, viola, charlie):
    assert patch_team(alice, {"credit_limit": "1"}).status_code == 403
    assert patch_team(viola, {"idle_limit_seconds": 5}).status_code == 403
    assert patch_team(charlie, {"credit_limit": "1"}).status_code == 404
    assert Team.objects.get(name="vision").credit_limit is None


@pytest.mark.parametrize("body, loc", [
    ({"credit_limit": 10}, "credit_limit"),
    ({"credit_limit": "ten"}, "credit_limit"),
    ({"credit_limit": "-1"}, "credit_limit"),
    ({"credit_limit": "NaN"}, "credit_limit"),
    ({"credit_limit": "1.00001"}, "credit_limit"),
    ({"credit_limit": "1e20"}, "credit_limit"),
    ({"idle_limit_seconds": 0}, "idle_limit_seconds"),
    ({"idle_limit_seconds": -5}, "idle_limit_seconds"),
    ({"idle_limit_seconds": "60"}, "idle_limit_seconds"),
    ({"idle_limit_seconds": True}, "idle_limit_seconds"),
    ({"idle_limit_seconds": 1.5}, "idle_limit_seconds"),
    ({"idle_limit_seconds": 2**40}, "idle_limit_seconds"),
])
def test_a_bad_limit_is_a_400_naming_the_field(tina, body, loc):
    response = patch_team(tina, {**body, "max_running": 3})
    assert response.status_code == 400, response.content
    assert [error["loc"] for error in response.json()["errors"]] == [loc]
    team = Team.objects.get(name="vision")
    assert (team.credit_limit, team.idle_limit_seconds, team.max_running) == (None, None, None)  # nothing half-applied


# ---------------------------------------------------------------- usage


def test_usage_is_summed_by_month_and_user(alice, bob, tina):
    finished_run(alice, initializing=1, running=2, idle=3)
    finished_run(alice, initializing=1, running=1, idle=0)
    finished_run(bob, initializing=2, running=0, idle=0)
    finished_run(bob, initializing=0, running=4, idle=0, days_ago=62)
    client = Client()
    client.force_login(tina)
    usage = client.get("/teams/vision/usage/").context["usage"]
    this_month, earlier = usage["months"][0], usage["months"][-1]
    by_user = {row["user"]: row for row in this_month["users"]}
    assert (by_user["alice"]["initializing"], by_user["alice"]["running"], by_user["alice"]["idle"]) == (2, 3, 3)
    assert by_user["alice"]["credits"] == 8 and by_user["bob"]["credits"] == 2
    assert earlier["users"] == [{"user": "bob", "initializing": 0, "running": 4, "idle": 0, "credits": 4}]
    assert usage["total"]["credits"] == 14


def test_the_usage_page_is_for_team_admins(alice, viola, charlie, tina):
    for user, status in ((tina, 200), (alice, 403), (viola, 403), (charlie, 404)):
        client = Client()
        client.force_login(user)
        assert client.get("/teams/vision/usage/").status_code == status, user
    assert Client().get("/teams/vision/usage/").status_code == 302  # signed out: to the login page


def test_the_usage_page_shows_the_numbers(chromium, console_url, engine, alice, tina):
    finished_run(alice, initializing=1.5, running=3, idle=2)
    Team.objects.filter(name="vision").update(credit_limit=Decimal(5), idle_limit_seconds=600)
    browser = sign_in(chromium, console_url, tina)
    try:
        browser.page.get_by_role("link", name="Usage").click()
        browser.page.wait_for_url("**/teams/vision/usage/")
        table = browser.page.locator("#usage-table")
        assert "alice" in table.inner_text()
        assert browser.page.locator("#usage-total").inner_text() == "6.5000"
        assert "has used its credit limit" in browser.page.locator("#limit-reached").inner_text()
        assert "600 s" in browser.page.locator("#team-limits").inner_text()
        browser.screenshot("team-usage")
    finally:
        browser.page.context.close()
