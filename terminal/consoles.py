"""Which console processes hold terminal sessions, and the sessions of those that are gone.

A session lives in the Daphne process that opened it (terminal.sessions), which ends
its sessions on record when it stops. One that is killed (kill -9, out of memory, its
machine lost) cannot, and its records would stay open for ever. So a console that
holds sessions is on record (terminal.models.ConsoleInstance) and says it is alive
every few seconds while it has sessions open on record (`beat`, from the sessions'
reaper); the reconciler (runs.engine.reconcile_runs, every RUNYARD_RECONCILE_SECONDS)
ends the open records of a console not heard from for RUNYARD_CONSOLE_LOST_SECONDS
as "console lost", at the last moment it was heard from, and takes the console off
record (one that stopped cleanly has none open by then).

A console that was only stalled that long (its database away) keeps its shells, but
their records stay ended as lost: the record never claims a session that nobody can
vouch for.
"""

import logging
import os
import secrets
import socket
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from terminal.models import ConsoleInstance, Ending, TerminalSessionRecord

log = logging.getLogger(__name__)

_key: tuple[int, str] | None = None  # (pid, key): a forked child is a console of its own


def this_console() -> str:
    """This process's key, as its sessions' records name it: host:pid:random."""
    global _key
    if _key is None or _key[0] != os.getpid():
        _key = (os.getpid(), f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}")
    return _key[1]


def beat_seconds() -> float:
    """How often a console says it is alive: a few times within the time it counts as lost."""
    return min(5.0, settings.RUNYARD_CONSOLE_LOST_SECONDS / 4)


def beat() -> None:
    """This console is alive now (on record from its first session on)."""
    now = timezone.now()
    key = this_console()
    if not ConsoleInstance.objects.filter(key=key).update(seen_at=now):
        ConsoleInstance.objects.update_or_create(key=key, defaults={"seen_at": now}, create_defaults={"started_at": now, "seen_at": now})


def end_sessions_of_lost_consoles(now=None) -> int:
    """End on record the open sessions of every console not heard from for
    RUNYARD_CONSOLE_LOST_SECONDS, and take the console off record (one that stopped
    cleanly has none open by then); returns how many sessions."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.RUNYARD_CONSOLE_LOST_SECONDS)
    ended = 0
    for console in ConsoleInstance.objects.filter(seen_at__lt=cutoff):
        last = console.seen_at
        ended += TerminalSessionRecord.objects.filter(console=console.key, ended_at__isnull=True).update(
            # It ended by then at the latest; a session opened after the last beat, as it began.
            ended_at=Greatest(F("started_at"), Value(last)),
            ended_how=Ending.CONSOLE_LOST,
            note=f"its console ({console.key}) was last heard from at {last:%Y-%m-%d %H:%M:%S} UTC"[:300],
        )
        # Unless it spoke again meanwhile: then it is on record as alive.
        ConsoleInstance.objects.filter(pk=console.pk, seen_at=last).delete()
        log.warning("console %s lost (last heard from at %s): its terminal sessions ended on record", console.key, last)
    # Recorded before consoles were (no console named): nobody vouches for them either.
    ended += TerminalSessionRecord.objects.filter(console="", ended_at__isnull=True, started_at__lt=cutoff).update(
        ended_at=now, ended_how=Ending.CONSOLE_LOST,
        note="recorded before consoles said they were alive: its console is not known to be",
    )
    return ended
