"""Writes the terminal session records (terminal.models): called by the consumer when a
session opens, resumes or is refused, and by the session (in a thread) when it ends.
A record that cannot be written is logged, never a reason to refuse or break a terminal."""

import logging
import threading

from django.db.models import F
from django.utils import timezone

from terminal import consoles
from terminal.models import Ending, TerminalSessionRecord

log = logging.getLogger(__name__)

# The records this process opened and has not ended: while there are any, its console
# must say it is alive (terminal.consoles), or the reconciler ends them as lost.
_open_records: set[int] = set()
_open_lock = threading.Lock()


def holds_open_records() -> bool:
    with _open_lock:
        return bool(_open_records)


def record_opened(session_key: str, run, user, mode: str) -> int | None:
    """The new record's id, naming this console (alive on record from now on)."""
    try:
        consoles.beat()
        record_id = TerminalSessionRecord.objects.create(
            session_key=session_key, run=run, team_id=run.team_id, user=user, username=user.get_username(),
            mode=mode, started_at=timezone.now(), console=consoles.this_console(),
        ).pk
        with _open_lock:
            _open_records.add(record_id)
        return record_id
    except Exception:
        log.exception("could not record the %s terminal of %s in run %s", mode, user.get_username(), run.pk)
        return None


def record_resumed(record_id: int | None) -> None:
    if record_id is None:
        return
    try:
        TerminalSessionRecord.objects.filter(pk=record_id).update(resumes=F("resumes") + 1)
    except Exception:
        log.exception("could not record the resumption of terminal record %s", record_id)


def record_refused(run, user, mode: str, why: str) -> None:
    now = timezone.now()
    try:
        TerminalSessionRecord.objects.create(
            run=run, team_id=run.team_id, user=user, username=user.get_username(), mode=mode,
            started_at=now, ended_at=now, ended_how=Ending.REFUSED, note=why[:300],
        )
    except Exception:
        log.exception("could not record a refused terminal of %s in run %s", user.get_username(), run.pk)


def record_ended(record_id: int | None, how: str, exit_code: int | None, note: str = "") -> None:
    """Once: a session that is ended twice (closed, and its reader seeing the end) keeps the first."""
    if record_id is None:
        return
    try:
        TerminalSessionRecord.objects.filter(pk=record_id, ended_at__isnull=True).update(
            ended_at=timezone.now(), ended_how=how, exit_code=exit_code, note=note[:300],
        )
    finally:
        # Not vouched for any more, written or not: one left open is ended as lost.
        with _open_lock:
            _open_records.discard(record_id)
