"""Status changes pushed to whoever watches, over the channel layer (§5 websockets)."""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.utils import timezone

from runs.reports import eta_seconds

log = logging.getLogger(__name__)


# The in-memory channel layer (embedded default) lives in the server's event loop;
# tasks in other threads must hand their messages to that loop. Consumers record it.
_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    _server_loop = loop


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        if _server_loop is not None and not _server_loop.is_closed():
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _server_loop)
        return  # nobody is listening yet
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(layer.group_send)(group, message)
    else:  # called from a thread that runs an event loop: async_to_sync would refuse
        running.create_task(layer.group_send(group, message))


def team_group(team_id: int) -> str:
    return f"team-{team_id}-runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def announce_status(run, event) -> None:
    _announce_status(run, {"from": event.from_status, "to": event.to_status, "at": event.at.isoformat(),
                           "reason": event.reason})


def announce_created(run) -> None:
    """A new run, as a status change from nothing to `pending`: an open runs list shows it
    (and why it waits) before any worker has looked at it."""
    _announce_status(run, {"from": "", "to": run.status, "at": run.created_at.isoformat(), "reason": ""})


def _announce_status(run, change: dict) -> None:
    message = {"type": "run.status", "run": run.pk, **change}
    try:
        _send(team_group(run.team_id), message)
        _send(run_group(run.pk), message)
    except Exception:  # a watcher that cannot be told must never undo a status change
        log.warning("could not announce status of run %s", run.pk, exc_info=True)


def announce_log(run_id: int, last_line: int) -> None:
    """New lines are stored: whoever follows the log reads them from the database."""
    try:
        _send(run_group(run_id), {"type": "run.log", "last": last_line})
    except Exception:
        log.warning("could not announce new log lines of run %s", run_id, exc_info=True)


def announce_progress(run_id: int, team_id: int, samples: list) -> None:
    """The run reported progress: the list's badge and the run pages' header (both
    on /ws/runs/, the team's group) show it with an ETA."""
    message = {"type": "run.progress", "run": run_id, "progress": samples[-1][1],
               "eta_seconds": eta_seconds(samples, timezone.now().timestamp())}
    try:
        _send(team_group(team_id), message)
    except Exception:
        log.warning("could not announce progress of run %s", run_id, exc_info=True)


def announce_waiting(run_id: int, team_id: int, reason: str) -> None:
    """A pending run says why it waits now (its cluster has no room, say): the list shows it."""
    try:
        _send(team_group(team_id), {"type": "run.waiting", "run": run_id, "reason": reason})
    except Exception:
        log.warning("could not announce why run %s waits", run_id, exc_info=True)
