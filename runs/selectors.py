"""Reads of runs, always scoped to what the user who asks may see (runs.access)."""

from django.db.models import QuerySet

from runs.access import run_for_user, visible_runs

__all__ = ["run_for_user", "runs_for_user"]  # run_for_user lives in runs.access; kept here for its callers


def runs_for_user(user, *, statuses=(), tag="", q="", owner="", before_id=None, limit=50) -> QuerySet:
    runs = visible_runs(user).select_related("owner", "team", "preset", "cluster").order_by("-pk")
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
    return runs[:limit]
