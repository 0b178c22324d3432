"""Reads of runs, always scoped to the teams of the user who asks."""

from django.db.models import QuerySet

from runs.models import Run


def runs_for_user(user, *, statuses=(), tag="", q="", owner="", before_id=None, limit=50) -> QuerySet:
    runs = (
        Run.objects.filter(team__memberships__user=user)
        .select_related("owner", "team", "preset")
        .order_by("-pk")
    )
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


def run_for_user(user, run_id: int) -> Run:
    """The run if it belongs to one of the user's teams; Run.DoesNotExist otherwise,
    so a run of another team looks exactly like one that does not exist."""
    return Run.objects.select_related("owner", "team", "preset").get(pk=run_id, team__memberships__user=user)


def administered_team_ids(user) -> set[int]:
    """The teams in which `user` is an admin: they manage those teams in /admin/."""
    from runs.models import Membership, Role

    if not user.is_authenticated:
        return set()
    return set(Membership.objects.filter(user=user, role=Role.ADMIN).values_list("team_id", flat=True))
