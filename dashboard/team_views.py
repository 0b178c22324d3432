"""A team's credit usage (/teams/NAME/usage/): by month and user, split by status,
next to its limits. Team admins (and superusers) only, through runs.access."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs.access import Action, NotAllowed, administered_team_ids, team_for_user
from runs.credits import team_usage
from runs.models import Team


def administered_team_or_404(request, name: str) -> Team:
    """The team of that name, for a page only its admins see: 404 if it is not among the
    user's teams, 403 if the user is in it without administering it."""
    try:
        return team_for_user(request.user, name, Action.ADMINISTER)
    except Team.DoesNotExist:
        raise Http404("There is no team with this name among yours.") from None
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None


@login_required
@require_GET
def team_usage_page(request, name: str):
    team = administered_team_or_404(request, name)
    usage = team_usage(team.pk)
    used = usage["total"]["credits"]
    return render(request, "dashboard/team_usage.html", {
        "team": team,
        "usage": usage,
        "used": used,
        "left": team.credit_limit - used if team.credit_limit is not None else None,
        "at_limit": team.credit_limit is not None and used >= team.credit_limit,
        "other_teams": Team.objects.filter(pk__in=administered_team_ids(request.user)).exclude(pk=team.pk).order_by("name"),
    })
