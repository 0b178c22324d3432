"""The run lifecycle: which status may follow which, and the one door through which
every status change passes (SPEC §1)."""

import logging
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from runs.models import Run, RunEvent, Status

log = logging.getLogger(__name__)

S = Status
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.INITIALIZING, S.TERMINATED}),
    S.INITIALIZING: frozenset({S.RUNNING, S.FAILED, S.TERMINATED}),
    S.RUNNING: frozenset({S.STOPPING, S.IDLE, S.TERMINATED}),
    S.STOPPING: frozenset({S.COMPLETED, S.FAILED, S.TERMINATED}),
    S.IDLE: frozenset({S.TERMINATED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.TERMINATED: frozenset(),
}
FINAL = frozenset({S.COMPLETED, S.FAILED, S.TERMINATED})
LIVE = frozenset(TRANSITIONS) - FINAL
# A run in these holds one of its team's and the installation's slots (runs.slots).
HOLDS_SLOT = frozenset({S.INITIALIZING, S.RUNNING, S.STOPPING})

# The timestamp each status stamps when it is entered.
PHASE_FIELD = {
    S.INITIALIZING: "initializing_at",
    S.RUNNING: "started_at",
    S.STOPPING: "stopping_at",
    S.IDLE: "idle_at",
    S.COMPLETED: "finished_at",
    S.FAILED: "finished_at",
    S.TERMINATED: "finished_at",
}


class IllegalTransition(Exception):
    def __init__(self, run_id: int, current: str, target: str):
        self.run_id, self.current, self.target = run_id, current, target
        if current in FINAL:
            message = f"run {run_id} is already {current}"
        else:
            message = f"run {run_id} cannot go from {current} to {target}"
        super().__init__(message)


def transition(
    run_id: int,
    target: str,
    *,
    actor=None,
    reason: str = "",
    only_from: Iterable[str] | None = None,
    **fields,
) -> Run:
    """Move a run to `target` atomically and record the event.

    The row is locked for the change, so of two concurrent callers exactly one
    succeeds and the other gets IllegalTransition. `only_from` narrows the statuses
    this caller expects to leave (a worker must not act on a run that moved on);
    `fields` are stored in the same update (exit_code, status_reason...).
    """
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        allowed = TRANSITIONS[run.status]
        if target not in allowed or (only_from is not None and run.status not in set(only_from)):
            raise IllegalTransition(run_id, run.status, target)
        now = timezone.now()
        event = RunEvent(
            run=run,
            from_status=run.status,
            to_status=target,
            at=now,
            actor=actor,
            actor_name=actor.get_username() if actor else "system",
            reason=reason[:1000],
        )
        run.status = target
        setattr(run, PHASE_FIELD[target], now)
        changed = ["status", PHASE_FIELD[target], *fields]
        if reason:
            run.status_reason = reason[:1000]
            changed.append("status_reason")
        for name, value in fields.items():
            setattr(run, name, value)
        # Only what changed: the row is locked, so the rest is as read (a run's spec
        # and log state are large, and every start passes here twice).
        run.save(update_fields=changed)
        event.save()
        transaction.on_commit(lambda: _announce(run, event))
        if event.from_status in HOLDS_SLOT and target not in HOLDS_SLOT:
            # A slot freed: the next waiting run starts now, not at the next reconcile.
            transaction.on_commit(_dispatch_waiting_runs)
    log.info("run %s: %s -> %s (%s) %s", run_id, event.from_status, target, event.actor_name, reason)
    return run


def _dispatch_waiting_runs() -> None:
    from runs.tasks import enqueue_dispatch

    try:
        enqueue_dispatch()
    except Exception:  # the broker is away: the reconciler dispatches at its next round
        log.exception("could not send dispatch")


def _announce(run: Run, event: RunEvent) -> None:
    from runs.live import announce_status

    announce_status(run, event)
