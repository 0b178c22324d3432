"""`make bench`: every hot path of Runyard beside its floor, measured in the same run.

    make bench                      # BENCH_SCALE=small: a quick look
    BENCH_SCALE=full make bench     # the sizes of the README's table; rewrites it and its chart
    BENCH_ONLY=logs,lists make bench

Each section (benchmarks/<section>.py) measures its rows: Runyard's time beside a
floor taken in the same run (a bare Docker client reading the same output, one
indexed query, a raw `docker exec`), the ratio, and the goal. Nothing is
asserted: the bench reports; CI does not run it. The rows land in
var/bench/results-<scale>.json; a full run also rewrites the README's results
table and docs/bench.svg (BENCH_README=1 does so for any scale, BENCH_README=0 never).
"""

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ["RUNYARD_TASKS_IN_PROCESS"] = "1"
os.environ.setdefault("SECRET_KEY", "runyard-bench-only")

import django  # noqa: E402

django.setup()

from benchmarks import report  # noqa: E402
from benchmarks.common import SCALES, scale_name  # noqa: E402

SECTIONS = ["logs", "metrics", "lists", "live"]


def main() -> int:
    from django.conf import settings
    from django.db import connection

    from runs.executors.docker import engine_reachable

    scale = scale_name()
    only = [name for name in os.environ.get("BENCH_ONLY", "").split(",") if name]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        print(f"BENCH_ONLY: no section {', '.join(sorted(unknown))} (there are {', '.join(SECTIONS)})")
        return 2
    if not engine_reachable():
        print("no Docker engine reachable: the floors need one (see README, `.ci/run` starts it)")
        return 1
    # Not serialized: a bench database holds a million runs (serializing is for TestCase rollbacks).
    connection.creation.create_test_db(verbosity=0, keepdb=True, serialize=False)
    from django.contrib.auth import get_user_model

    from runs.models import Membership, Team

    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": "admin"})
    from benchmarks import lists

    lists.settle()  # runs seeded by an earlier bench: nothing in them for the reconciler to do
    ctx = SimpleNamespace(scale=scale, sizes=SCALES[scale], user=user, team=team,
                          database=connection.vendor, settings=settings)
    print(f"Runyard bench, scale {scale}, database {connection.vendor}, {os.cpu_count()} cores")
    rows = []
    failed = []
    for name in only or SECTIONS:
        print(f"\n== {name}")
        started = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            for row in module.measure(ctx):
                rows.append(row)
                print(report.line(row))
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"   ({name}: {time.monotonic() - started:.0f} s)")
    print()
    print(report.table(rows, scale))
    out = Path(settings.VAR_DIR) / "bench" / f"results-{scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scale": scale, "database": connection.vendor, "cpus": os.cpu_count(),
                               "rows": [row.as_dict() for row in rows]}, indent=1))
    print(f"\nrows written to {out}")
    write_readme = os.environ.get("BENCH_README", "1" if scale == "full" else "0") == "1"
    if write_readme and not only and not failed:
        report.write_readme(rows, scale, connection.vendor)
        print("README.md's results table and docs/bench.svg rewritten")
    if failed:
        print(f"sections that broke: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
