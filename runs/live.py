"""Status changes pushed to whoever watches, over the channel layer (§5 websockets)."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def team_group(team_id: int) -> str:
    return f"team-{team_id}-runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def announce_status(run, event) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {
        "type": "run.status",
        "run": run.pk,
        "from": event.from_status,
        "to": event.to_status,
        "at": event.at.isoformat(),
        "reason": event.reason,
    }
    try:
        async_to_sync(layer.group_send)(team_group(run.team_id), message)
        async_to_sync(layer.group_send)(run_group(run.pk), message)
    except Exception:  # a watcher that cannot be told must never undo a status change
        log.warning("could not announce status of run %s", run.pk, exc_info=True)
