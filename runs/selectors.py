"""Reads of runs, always scoped to what the user who asks may see (runs.access)."""

from django.db.models import QuerySet

from runs.access import run_for_user, visible_runs

__all__ = ["run_for_user", "runs_for_user"]  # run_for_user lives in runs.access; kept here for its callers


def runs_for_user(user, *, statuses=(), tag="", q="", owner="", before_id=None, limit=50,
                  order=None, offset=0) -> QuerySet:
    """Newest first, paged by `before_id`; or by `order` (an expression, e.g. a
    reported value: dashboard.run_columns), then newest, paged by `offset`."""
    runs = visible_runs(user).select_related("owner", "team", "preset", "cluster")
    runs = runs.order_by(order, "-pk") if order is not None else runs.order_by("-pk")
    if statuses:
        runs = runs.filter(status__in=statuses)
    if tag:
        runs = runs.filter(tag_index__contains=f"|{tag}|")
    if q:
        runs = runs.filter(name__icontains=q)
    if owner:
        runs = runs.filter(owner__username=owner)
    if before_id is not None:
        runs = runs.filter(pk__lt=before_id)
    if order is not None:
        return runs[offset:offset + limit]
    return runs[:limit]
