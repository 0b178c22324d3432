"""Lists rows: the runs list (API and page), its filters and a run's page, at N runs.

The bench database is seeded with N runs (kept between bench runs: only what is
missing up to N is added, by one INSERT ... SELECT generate_series) spread over
five teams, of which the bench user sees two (one as a viewer, whose queue of
pending runs waits at its cap of 0); a mix of statuses, owners, tags and names,
and every hundredth run with its events and reported metrics as real runs have.

Each row is the p95 of 200 requests made as a user makes them (the Django test
client in-process, signed in), against the floor: one indexed query of a
50-row page by id, raw SQL through the cursor. Goal: p95 under 50 ms.
"""

import os
import time

from benchmarks.common import Row, percentile, samples

REQUESTS = 200  # a p95 of 50 was their 3rd slowest: one stray pause on the machine moved a row by 20 ms
TEAMS = ["lists-a", "lists-b", "lists-c", "lists-d", "lists-e"]  # the bench user sees a (admin) and b (viewer)
OWNERS = ["bench", "lists-ana", "lists-ben", "lists-cho", "lists-dev"]
MODELS = ["resnet", "bert", "gpt2", "vit", "unet", "llama", "t5", "yolo"]
DATASETS = ["imagenet", "cifar10", "squad", "coco", "wikitext", "mnist"]
TAGS = ["baseline", "sweep", "ablation", "prod", "debug", "lr-search"]
WAITING = "waiting: team lists-b is at its cap of 0 running runs"


def measure(ctx) -> list[Row]:
    rows = []
    # BENCH_LIST_RUNS=100000: other sizes than the scale's (the bench database keeps what it seeded).
    counts = [int(size) for size in os.environ.get("BENCH_LIST_RUNS", "").split(",") if size] or ctx.sizes["run_counts"]
    for count in counts:
        started = time.monotonic()
        added, held = seed(ctx, count)
        print(f"   {count:,} runs: {added:,} seeded in {time.monotonic() - started:.1f} s")
        if held > count:
            # Kept from a bigger run: the table is larger than this size, and the rows say so.
            print(f"   the bench database holds {held:,} seeded runs already: measured at that size")
        rows += measure_at(ctx, max(held, count))
        if held > count:
            break
    return rows


def _teams_and_owners(ctx):
    from django.contrib.auth import get_user_model

    from runs.models import Membership, Team

    User = get_user_model()
    owners = [ctx.user] + [User.objects.get_or_create(username=name)[0] for name in OWNERS[1:]]
    teams = []
    for name in TEAMS:
        team, _ = Team.objects.get_or_create(name=name)
        teams.append(team)
    Team.objects.filter(name="lists-b").update(max_running=0)  # its pending runs wait, whatever else runs
    Membership.objects.get_or_create(user=ctx.user, team=teams[0], defaults={"role": "admin"})
    Membership.objects.get_or_create(user=ctx.user, team=teams[1], defaults={"role": "viewer"})
    for index, owner in enumerate(owners[1:]):
        Membership.objects.get_or_create(user=owner, team=teams[0], defaults={"role": "member"})
        Membership.objects.get_or_create(user=owner, team=teams[2 + index % 3], defaults={"role": "member"})
    return teams, owners


def settle(ctx=None) -> None:
    """Runs seeded by an earlier bench, settled before anything is measured (see _settle)."""
    from django.db import connection

    from runs.models import Team

    team_ids = list(Team.objects.filter(name__in=TEAMS).values_list("pk", flat=True))
    if team_ids:
        with connection.cursor() as cursor:
            _settle(cursor, team_ids)


def _settle(cursor, team_ids: list[int]) -> None:
    """Nothing of a seeded run is left for the reconciler of the bench's own process
    to do (it would collect, stop and start them beside what is measured): a
    finished run's container is gone, and a running one is held by a lease of its own."""
    cursor.execute("""
    UPDATE runs_run SET container_removed_at = finished_at
     WHERE team_id = ANY(%(teams)s) AND status IN ('completed', 'failed', 'terminated') AND container_removed_at IS NULL;
    UPDATE runs_run SET lease_owner = 'bench-seed', lease_until = timestamptz '2100-01-01'
     WHERE team_id = ANY(%(teams)s) AND status = 'running' AND lease_owner = '';
    """, {"teams": team_ids})


def seed(ctx, count: int) -> int:
    """Runs in the five teams up to `count`; returns how many were added, and how many there are."""
    from django.db import connection, transaction

    from runs.models import ResourcePreset, Run

    teams, owners = _teams_and_owners(ctx)
    team_ids = [team.pk for team in teams]
    have = Run.objects.filter(team_id__in=team_ids).count()
    if have >= count:
        with connection.cursor() as cursor:
            _settle(cursor, team_ids)  # a database seeded before this was done
        return 0, have
    preset = ResourcePreset.objects.order_by("pk").first()
    params = {
        "first": have + 1, "last": count, "preset": preset.pk, "waiting": WAITING,
        "teams": team_ids, "owners": [owner.pk for owner in owners],
        "models": MODELS, "datasets": DATASETS, "tags": TAGS,
    }
    # i picks everything, so the runs seeded up to N are the same however many bench runs made them.
    # Team of i: a 40 %, b 20 %, c d e 40 %; status: 10 % failed, 5 % terminated, pending 1 in 500
    # (in b only, whose cap keeps them waiting), running 1 in 1000 (placed by a cluster: no engine slot).
    sql = """
    WITH s AS (
      SELECT i,
        (ARRAY[1,1,2,1,3,4,1,2,5,1])[1 + i %% 10] AS t,
        CASE WHEN i %% 500 = 7 THEN 'pending' WHEN i %% 1000 = 3 THEN 'running'
             WHEN i %% 20 IN (1, 11) THEN 'failed' WHEN i %% 20 = 5 THEN 'terminated' ELSE 'completed' END AS st,
        timestamptz '2026-01-01' + i * interval '7 seconds' AS at,
        %(models)s::text[] AS m, %(datasets)s::text[] AS d, %(tags)s::text[] AS g
      FROM generate_series(%(first)s::int, %(last)s::int) AS i
    ), r AS (
      SELECT s.*,
        CASE WHEN st = 'pending' THEN 2 ELSE t END AS team_n,
        m[1 + i %% 8] || '-' || d[1 + (i / 8) %% 6] || '-' || i AS nm,
        CASE i %% 4 WHEN 0 THEN ARRAY[]::text[] WHEN 1 THEN ARRAY[g[1 + i %% 6]]
             ELSE ARRAY[g[1 + i %% 6], g[1 + (i / 6) %% 6]] END AS tg
      FROM s
    )
    INSERT INTO runs_run (name, description, tags, tag_index, spec, image, image_digest, status, status_reason,
      exit_code, executor, container_id, created_at, initializing_at, started_at, finished_at, progress,
      log_lines, log_cursor, log_complete, log_pending, lease_owner, owner_id, preset_id, team_id, changes,
      exports_state, imports, progress_samples, reports_malformed, node, metrics_last, summary, warnings)
    SELECT nm, '', to_jsonb(tg), CASE WHEN cardinality(tg) = 0 THEN '' ELSE '|' || array_to_string(tg, '|') || '|' END,
      jsonb_build_object('env', '{}'::jsonb, 'run', jsonb_build_array(jsonb_build_object(
          'command', 'python train.py --seed ' || i, 'workdir', null)),
        'name', nm, 'tags', to_jsonb(tg), 'image', 'runyard/busybox:latest', 'ports', '[]'::jsonb,
        'export', '{}'::jsonb, 'import', '{}'::jsonb,
        'resources', jsonb_build_object('preset', 'cpu-small', 'cluster', 'default'), 'description', '',
        'interactive', null, 'image_credential', null, 'termination_protection', false,
        'termination_grace_seconds', 10.0),
      'runyard/busybox:latest', '', st,
      CASE st WHEN 'pending' THEN %(waiting)s WHEN 'failed' THEN 'exited with code 1' ELSE '' END,
      CASE st WHEN 'failed' THEN 1 WHEN 'completed' THEN 0 ELSE NULL END,
      CASE st WHEN 'running' THEN 'swarm' ELSE 'docker' END, '', at,
      CASE WHEN st <> 'pending' THEN at + interval '1 second' END,
      CASE WHEN st <> 'pending' THEN at + interval '3 seconds' END,
      CASE WHEN st IN ('completed', 'failed', 'terminated') THEN at + interval '1 hour' END,
      CASE WHEN i %% 100 = 0 THEN 1.0 END,
      CASE WHEN st = 'pending' THEN 0 ELSE i %% 5000 END, 0, st IN ('completed', 'failed', 'terminated'),
      '{}'::jsonb, '', (%(owners)s::int[])[1 + (i / 3) %% 5], %(preset)s, (%(teams)s::bigint[])[team_n], '{}'::jsonb,
      '', '[]'::jsonb, '[]'::jsonb, 0, '',
      CASE WHEN i %% 100 = 0 THEN jsonb_build_object('loss', 1.0 / i, 'acc', (i %% 997) / 997.0, 'lr', 0.001)
           ELSE '{}'::jsonb END,
      CASE WHEN i %% 100 = 0 THEN jsonb_build_object('best_acc', (i %% 991) / 991.0) ELSE '{}'::jsonb END,
      '[]'::jsonb
    FROM r
    """
    events = """
    INSERT INTO runs_runevent (run_id, from_status, to_status, at, actor_id, actor_name, reason)
    SELECT run.id, e.f, e.t, run.created_at + e.n * interval '1 second', NULL, 'system', e.why
    FROM runs_run run
    CROSS JOIN (VALUES (0, 'pending', 'pending', 'created'), (1, 'pending', 'initializing', 'picked up by a worker'),
                       (2, 'initializing', 'running', 'container started'),
                       (3600, 'running', 'completed', 'exited with code 0')) AS e(n, f, t, why)
    WHERE run.team_id = ANY(%(teams)s) AND run.id > %(after)s AND run.metrics_last <> '{}'::jsonb
    """
    after = Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        cursor.execute(events, {"teams": team_ids, "after": after})
        _settle(cursor, team_ids)
    with connection.cursor() as cursor:  # what autovacuum does to a table in use: statistics, the visibility map
        cursor.execute("VACUUM ANALYZE runs_run")
        cursor.execute("VACUUM ANALYZE runs_runevent")
    _checkpoint()
    return count - have, count


def _checkpoint() -> None:
    """The seeded rows written out now (a superuser's CHECKPOINT), not by the
    database's background writer while the pages are measured: a console holding a
    million runs gathered them over months, not in the last minute."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:
        print(f"   (no CHECKPOINT after seeding: {str(exc).strip()})")


def _p95(fn) -> float:
    fn()  # warm: the first request pays for imports and connections
    return percentile(samples(fn, REQUESTS), 95)


def measure_at(ctx, count: int) -> list[Row]:
    from django.db import connection
    from django.test import Client

    from runs.models import Run, Team

    client = Client(SERVER_NAME="localhost")
    client.force_login(ctx.user)
    team_ids = list(Team.objects.filter(memberships__user=ctx.user).values_list("pk", flat=True))

    def floor_page():
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM runs_run WHERE team_id = ANY(%s) ORDER BY id DESC LIMIT 51", [team_ids])
            cursor.fetchall()

    floor = _p95(floor_page)
    # A run of the bench user's team with events and metrics: what a run's page shows.
    shown = Run.objects.filter(team__name="lists-a").exclude(metrics_last={}).order_by("-pk").first()
    middle = Run.objects.filter(team__name="lists-a", pk__lt=shown.pk - count // 2).order_by("-pk").first() or shown
    paths = [
        ("api", "/api/v1/runs?limit=50"),
        ("api status=failed", "/api/v1/runs?limit=50&status=failed"),
        ("api status=pending", "/api/v1/runs?limit=50&status=pending"),
        ("api tag=ablation", "/api/v1/runs?limit=50&tag=ablation"),
        ("api owner=lists-ben", "/api/v1/runs?limit=50&owner=lists-ben"),
        ("api q=bert", "/api/v1/runs?limit=50&q=BERT"),
        (f"api q=rare ({middle.pk})", f"/api/v1/runs?limit=50&q=-{middle.name.rsplit('-', 1)[1]}"),
        ("api q=none", "/api/v1/runs?limit=50&q=no-such-run"),
        ("page /", "/"),
        ("page / status=failed&tag=sweep", "/?status=failed&tag=sweep"),
        ("page / owner+q", "/?owner=lists-ana&q=vit"),
        ("page / older", f"/?before={middle.pk}"),
        ("page /runs/ID/", f"/runs/{shown.pk}/"),
    ]
    rows = []
    for label, path in paths:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code}")
        ours = _p95(lambda path=path: client.get(path))
        rows.append(Row(f"list {label}", f"{count:,} runs", floor, ours, "one indexed page query (p95)",
                        max_seconds=0.05, notes=[path]))
    return rows
