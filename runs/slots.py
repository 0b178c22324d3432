"""Run slots: how many runs may hold the machine at once, and which pending run
starts next.

A run holds a slot while it is initializing, running or stopping. Two caps apply:
its team's `max_running` (empty: the team has no cap of its own) and the
installation's RUNYARD_MAX_RUNNING. A pending run that finds no room stays
`pending`, saying why in its `status_reason`, and starts as soon as a slot frees:
the transition out of a slot enqueues `dispatch`, and the reconciler dispatches too.

A run on a Swarm cluster is admitted by its team's cap only: admitted, it is handed
to the cluster (`submitted_at`) and holds its team's slot from then on, while it
still waits `pending` for the Swarm to find a node with room. The installation's
cap is the one engine's, and counts only the runs on it.

A team that has used its credit limit (runs.credits) starts nothing: its pending
runs wait, saying so, until a team admin raises the limit; its live runs go on.

Order: within a team runs start in creation order. When the installation is full,
a freed slot goes to the waiting team with the fewest runs holding slots (then to
the oldest run), so one team's backlog cannot take every slot as slots free.

Admission is decided under one lock (an advisory lock on PostgreSQL; SQLite's
IMMEDIATE transactions already take the database's write lock), so two workers
cannot both start a run past a cap.
"""

import logging
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from functools import partial
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from runs.credits import team_credits_used
from runs.lifecycle import HOLDS_SLOT, IllegalTransition, transition
from runs.live import announce_waiting
from runs.models import Run, Status, Team

log = logging.getLogger(__name__)

SWARM = "swarm"  # the executor of runs that their cluster places
# Any constant: the key of the advisory lock that serializes admissions.
SLOTS_LOCK_KEY = 0x72756E79  # "runy"
REASON_MAX = Run._meta.get_field("status_reason").max_length


@dataclass
class SlotPlan:
    admitted: list[int] = field(default_factory=list)  # pending runs that may start now
    waiting: dict[int, str] = field(default_factory=dict)  # pending run id -> why it waits


def plan_slots() -> SlotPlan:
    """Which pending runs fit now, and why the others wait. Reads only."""
    waiting = Run.objects.filter(status=Status.PENDING, submitted_at__isnull=True).order_by("pk")
    pending = list(waiting.values_list("pk", "team_id", "executor"))
    plan = SlotPlan()
    if not pending:
        return plan
    on_clusters = {run_id for run_id, _, executor in pending if executor == SWARM}
    holding = Run.objects.filter(Q(status__in=HOLDS_SLOT) | Q(status=Status.PENDING, submitted_at__isnull=False))
    held = list(holding.values_list("team_id", "executor"))
    live = Counter(team_id for team_id, _ in held)
    engine_live = sum(1 for _, executor in held if executor != SWARM)
    teams = {t.pk: t for t in Team.objects.filter(pk__in={team_id for _, team_id, _ in pending})
             .only("pk", "name", "max_running", "credit_limit")}
    queues: dict[int, deque[int]] = defaultdict(deque)
    for run_id, team_id, _ in pending:
        queues[team_id].append(run_id)
    # A team that has used its credits starts nothing until an admin raises the limit.
    for team_id, queue in queues.items():
        team = teams[team_id]
        if team.credit_limit is not None and team_credits_used(team_id) >= team.credit_limit:
            while queue:
                plan.waiting[queue.pop()] = f"waiting: team {team.name} has used its credit limit of {team.credit_limit} credits"
    # A team's own cap first: past it, its runs wait for the team.
    for team_id, queue in queues.items():
        cap = teams[team_id].max_running
        if cap is None:
            continue
        room = max(0, cap - live[team_id])
        while len(queue) > room:
            plan.waiting[queue.pop()] = (
                f"waiting: team {teams[team_id].name} is at its cap of {cap} running run{'s' if cap != 1 else ''}"
            )
    # A Swarm finds its runs room itself.
    for queue in queues.values():
        for run_id in [r for r in queue if r in on_clusters]:
            queue.remove(run_id)
            plan.admitted.append(run_id)
    # Then the installation's slots, to the team holding the fewest.
    free = settings.RUNYARD_MAX_RUNNING - engine_live
    while free > 0 and any(queues.values()):
        team_id = min((t for t, q in queues.items() if q), key=lambda t: (live[t], queues[t][0]))
        plan.admitted.append(queues[team_id].popleft())
        live[team_id] += 1
        free -= 1
    cap = settings.RUNYARD_MAX_RUNNING
    for queue in queues.values():
        for run_id in queue:
            plan.waiting[run_id] = f"waiting: all {cap} run slots of this installation are taken"
    return plan


def admit(run_id: int) -> bool:
    """pending → initializing if the run fits now; else it stays pending, saying why."""
    with transaction.atomic():
        _lock_slots()
        executor = Run.objects.filter(pk=run_id, status=Status.PENDING).values_list("executor", flat=True).first()
        if executor is None:
            return False
        plan = plan_slots()
        if run_id in plan.admitted:
            if executor == SWARM:
                # Handed to its cluster; it stays pending until a node has room (runs.engine).
                return bool(Run.objects.filter(pk=run_id, status=Status.PENDING, submitted_at__isnull=True).update(
                    submitted_at=timezone.now(), status_reason="waiting: handed to the cluster"))
            try:
                transition(run_id, Status.INITIALIZING, reason="picked up by a worker", only_from=[Status.PENDING])
            except IllegalTransition:
                return False
            return True
        say_why_waiting(plan.waiting)
        return False


def dispatch(*, min_age_seconds: float = 0) -> int:
    """Send a start to every pending run that fits now; returns how many.

    A start that finds the run started already, or no room after all, does
    nothing, so sending one twice is harmless. `min_age_seconds` spares runs just
    created, whose own start is on its way.
    """
    from runs.tasks import enqueue

    plan = plan_slots()
    say_why_waiting(plan.waiting)
    ids = plan.admitted
    if min_age_seconds and ids:
        young = timezone.now() - timedelta(seconds=min_age_seconds)
        ids = list(Run.objects.filter(pk__in=ids, created_at__lt=young).values_list("pk", flat=True))
    for run_id in ids:
        enqueue("start", run_id, on_commit=False)
    return len(ids)


def _lock_slots() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SLOTS_LOCK_KEY])


def say_why_waiting(waiting: dict[int, str]) -> None:
    """The one way a pending run says why it waits ({run id: reason}): its
    `status_reason`, written only where it changed, and each change told to whoever
    watches the team's runs (runs.live), once the transaction commits. A run that
    left `pending` meanwhile keeps its own reason."""
    by_reason: dict[str, list[int]] = defaultdict(list)
    for run_id, reason in waiting.items():
        by_reason[reason[:REASON_MAX]].append(run_id)
    for reason, ids in by_reason.items():
        stale = Run.objects.filter(pk__in=ids, status=Status.PENDING).exclude(status_reason=reason)
        changed = list(stale.values_list("pk", "team_id"))
        if not changed:
            continue
        stale.filter(pk__in=[run_id for run_id, _ in changed]).update(status_reason=reason)
        for run_id, team_id in changed:
            transaction.on_commit(partial(announce_waiting, run_id, team_id, reason))


def queue_position(run: Run) -> int | None:
    """1-based place of a pending run in its team's queue (creation order); None once it left pending.

    `attach_queue_positions` fills it for a whole page in one query."""
    if run.status != Status.PENDING:
        return None
    known = run.__dict__.get("queue_position")
    if known is not None:
        return known
    # 0: the run left the queue since it was read (a worker started it): no place in it.
    return Run.objects.filter(team_id=run.team_id, status=Status.PENDING, pk__lte=run.pk).count() or None


def attach_queue_positions(runs: list[Run]) -> list[Run]:
    """Set `queue_position` on each run of a page (None if not pending), with one query.

    The database numbers the pending runs of the page's teams up to the page's
    newest (an index-only walk of the team's queue: Run.Meta's team, status, id)
    and returns the page's places alone, not the queue."""
    pending = [run for run in runs if run.status == Status.PENDING]
    place: dict[int, int] = {}
    if pending:
        ids = [run.pk for run in pending]
        teams = sorted({run.team_id for run in pending})
        table = Run._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, place FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY team_id ORDER BY id) AS place"
                f" FROM {table} WHERE status = %s AND team_id IN ({', '.join(['%s'] * len(teams))}) AND id <= %s) AS queue"
                f" WHERE id IN ({', '.join(['%s'] * len(ids))})",
                [Status.PENDING.value, *teams, max(ids), *ids],
            )
            place = dict(cursor.fetchall())
    for run in runs:
        run.queue_position = place.get(run.pk) if run.status == Status.PENDING else None
    return runs
