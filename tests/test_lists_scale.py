"""The runs list at any size (issue 11): the API list, the list page, its filters and a
run's page make the same number of queries for 3 runs as for 60, queue places
included; the places are those of the team's queue. (The time they take is the
bench's: benchmarks/lists.py.)

No worker: these tests run in one transaction never committed, so runs stay as made.
"""

import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from runs.models import Run, Status, Team
from tests.conftest import Api
from tests.test_api import launch


def grow(template: Run, count: int, **fields) -> list[Run]:
    """`count` copies of a run, in one insert: a mix of statuses, tags and names."""
    made = []
    statuses = [Status.COMPLETED, Status.FAILED, Status.PENDING, Status.TERMINATED]
    for index in range(count):
        copy = Run.objects.get(pk=template.pk)
        copy.pk = None
        copy.name = f"{template.name}-{index}"
        copy.status = statuses[index % len(statuses)]
        copy.tags = ["sweep"] if index % 2 else ["baseline", "sweep"]
        copy.tag_index = "|" + "|".join(copy.tags) + "|"
        copy.metrics_last = {"loss": 1 / (index + 1)}
        for key, value in fields.items():
            setattr(copy, key, value)
        made.append(copy)
    return Run.objects.bulk_create(made)


PATHS = [
    "/api/v1/runs?limit=50",
    "/api/v1/runs?limit=50&status=pending",
    "/api/v1/runs?limit=50&status=failed&tag=sweep",
    "/api/v1/runs?limit=50&q=SCALE&owner=bob",
    "/",
    "/?status=pending",
    "/?tag=sweep&owner=bob&q=scale&columns=loss",
    "/?columns=loss&sort=-loss",
]


def queries(client: Client, path: str) -> int:
    client.get(path)  # once first: what a process reads once (content types, sessions) is not counted
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return len(captured)


def test_lists_make_as_many_queries_for_60_runs_as_for_4(alice, bob, charlie):
    client = Client()
    client.force_login(alice)
    first = launch(alice, "scale")
    grow(first, 3, owner=bob)  # one pending: its queue place is read too
    grow(launch(charlie, "elsewhere"), 5)  # another team's runs: never shown, never counted
    few = {path: queries(client, path) for path in PATHS}
    grow(first, 56, owner=bob)
    many = {path: queries(client, path) for path in PATHS}
    assert many == few
    assert len(Api(alice).get("/runs", limit=50).json()["items"]) == 50


def test_a_runs_page_makes_as_many_queries_whatever_the_number_of_runs(alice):
    client = Client()
    client.force_login(alice)
    run = launch(alice, "scale")
    grow(run, 3)
    few = [queries(client, f"/runs/{run.pk}/"), queries(client, f"/runs/{run.pk}/row/?columns=loss")]
    grow(run, 60)
    assert [queries(client, f"/runs/{run.pk}/"), queries(client, f"/runs/{run.pk}/row/?columns=loss")] == few


def test_queue_places_on_a_page_are_those_of_each_teams_queue(alice, charlie):
    vision = launch(alice, "queue")
    speech = launch(charlie, "queue")
    # Interleaved: the two teams' queues, and runs that left the queue between their runs.
    mine, theirs = [vision], [speech]
    for index in range(6):
        mine += grow(vision, 1, status=Status.PENDING, status_reason="waiting: test")
        theirs += grow(speech, 1, status=Status.PENDING, status_reason="waiting: test")
        grow(vision, 1, status=Status.COMPLETED)
    listed = {item["id"]: item["queue_position"] for item in Api(alice).get("/runs", limit=50).json()["items"]}
    assert [listed[run.pk] for run in mine] == list(range(1, 8))
    assert all(place is None for run_id, place in listed.items() if run_id not in {run.pk for run in mine})
    # A page of the newest: places still counted from the head of the queue.
    newest = Api(alice).get("/runs", limit=2, status="pending").json()["items"]
    assert [item["queue_position"] for item in newest] == [7, 6]
    assert Api(charlie).get(f"/runs/{theirs[-1].pk}").json()["queue_position"] == 7
    # The page shows the same places.
    client = Client()
    client.force_login(alice)
    page = client.get("/?status=pending").content.decode()
    assert "#7 in the team&#x27;s queue" in page or "#7 in the team's queue" in page
    assert Team.objects.filter(name="speech").exists()


def runs_rows_examined(sql: str) -> int:
    """How many rows of runs_run PostgreSQL reads to answer `sql` (kept or filtered out)."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    examined, nodes = 0, [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == "runs_run":
            rows = node["Actual Rows"] + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
            examined += rows * node["Actual Loops"]
    return examined


def test_a_reconcile_round_reads_only_the_runs_that_still_have_a_container(alice):
    # Finished runs whose containers are gone are nothing to the reconciler. At a million
    # runs one query of its round scanned them all: 0.5 s of PostgreSQL on three workers,
    # every few seconds, which every live log and page waited behind on two cores.
    from django.utils import timezone

    from runs.engine import reconcile_runs

    if connection.vendor != "postgresql":
        pytest.skip("the plans are PostgreSQL's (the tests' DATABASE_URL)")
    grow(launch(alice, "done"), 3000, status=Status.COMPLETED, container_removed_at=timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_run")  # as autovacuum would have, after so many inserts
    with CaptureQueriesContext(connection) as captured:
        reconcile_runs()
    reads = [query["sql"] for query in captured if query["sql"].startswith("SELECT") and '"runs_run"' in query["sql"]]
    assert reads
    examined = {sql[:120]: runs_rows_examined(sql) for sql in reads}
    assert max(examined.values()) < 100, examined
