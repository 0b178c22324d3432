"""Reads of runs, always scoped to what the user who asks may see (runs.access)."""

import functools

from django.contrib.auth import get_user_model
from django.db.models import Prefetch, Subquery

from runs.access import run_for_user, visible_runs
from runs.models import Run

__all__ = ["run_for_user", "runs_for_user"]  # run_for_user lives in runs.access; kept here for its callers


# What no list shows: left in the database (the masks' ciphertexts are the largest values of a run).
NEVER_LISTED = ("mask_ciphertext", "inline_secrets_ciphertext", "log_pending", "log_cursor", "lease_owner", "lease_until")


def runs_for_user(user, *, statuses=(), tag="", q="", owner="", before_id=None, limit=50,
                  order=None, offset=0, unread=()) -> list[Run]:
    """Newest first, paged by `before_id`; or by `order` (an expression, e.g. a
    reported value: dashboard.run_columns), then newest, paged by `offset`.
    Each run with its owner, team, preset and cluster: one query each for the page
    (prefetch_related), one object for all the runs that share it. A page has a
    handful of each; joined into the page's query (select_related), each row
    brought its own copy of all four, and PostgreSQL planned a five-table join for
    every page (1.2 ms of planning at a million runs, 0.15 ms for the runs alone).

    The same few queries, whatever the number of runs: each filter has an index
    that keeps the newest first (Run.Meta, migrations 0011 and 0015: the team's and
    the owner's runs by id, a status within a team and across them, trigrams of the
    name and of the tags on PostgreSQL), so a page reads about its own rows.
    `unread`: more fields the caller never reads, besides NEVER_LISTED."""
    runs = visible_runs(user).defer(*NEVER_LISTED, *unread).prefetch_related(
        Prefetch("owner", queryset=get_user_model().objects.defer(*_owner_unlisted())), "team", "preset", "cluster")
    runs = runs.order_by(order, "-pk") if order is not None else runs.order_by("-pk")
    if statuses:
        runs = runs.filter(status__in=statuses)
    if tag:
        runs = runs.filter(tag_index__contains=f"|{tag}|")
    if q:
        runs = runs.filter(name__icontains=q)
    if owner:
        # The owner's id read once inside the query (not joined), so the owner's index serves it newest first.
        User = get_user_model()
        runs = runs.filter(owner_id=Subquery(User.objects.filter(**{User.USERNAME_FIELD: owner}).values("pk")[:1]))
    if before_id is not None:
        runs = runs.filter(pk__lt=before_id)
    return list(runs[offset:offset + limit] if order is not None else runs[:limit])


@functools.cache
def _owner_unlisted() -> tuple[str, ...]:
    """Of a run's owner a list shows the name only: the rest of the user's row is left
    in the database (a password hash and two dates)."""
    User = get_user_model()
    kept = {User._meta.pk.name, User.USERNAME_FIELD}
    return tuple(field.name for field in User._meta.concrete_fields if field.name not in kept)
