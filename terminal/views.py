"""The Terminal tab (/runs/{id}/terminal/): the page; the terminal itself is the websocket.
And the record of terminal sessions, for the team's admins (/teams/{name}/terminals/,
/runs/{id}/terminal/sessions/)."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.team_views import administered_team_or_404
from dashboard.views import _run_context, _run_or_404
from runs.access import Action, NotAllowed, may, require
from terminal.consumers import OPEN_STATUSES
from terminal.models import TerminalSessionRecord

PAGE_SIZE = 100


@login_required
@require_GET
def run_terminal(request, run_id: int):
    run = _run_or_404(request, run_id)
    context = _run_context(request, run, "terminal")
    return render(request, "terminal/run_terminal.html", {
        **context, "can_open": context["can_launch"] and run.status in OPEN_STATUSES,
        "can_see_sessions": may(request.user, Action.ADMINISTER, run.team),
    })


@login_required
@require_GET
def team_terminal_sessions(request, name: str):
    """Every terminal session in the team's runs, newest first: for its admins only."""
    return _sessions_page(request, administered_team_or_404(request, name), run=None)


@login_required
@require_GET
def run_terminal_sessions(request, run_id: int):
    """The terminal sessions of one run: for its team's admins only."""
    run = _run_or_404(request, run_id)  # another team's run: 404, as a missing one
    try:
        require(request.user, Action.ADMINISTER, run.team)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    return _sessions_page(request, run.team, run=run)


def _sessions_page(request, team, run):
    records = TerminalSessionRecord.objects.filter(team=team).select_related("run")
    if run is not None:
        records = records.filter(run=run)
    before = request.GET.get("before", "").strip()
    if before:
        if not before.isdigit():
            return HttpResponseBadRequest("before: expected a record number")
        records = records.filter(pk__lt=int(before))
    page = list(records.order_by("-pk")[:PAGE_SIZE + 1])
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    return render(request, "terminal/sessions.html", {
        "team": team, "run": run, "records": page,
        "older": page[-1].pk if more else None,
    })
