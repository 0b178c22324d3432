"""The web pages (SPEC §5). Server-rendered; each view checks the run's team."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from runs import logstore
from runs.models import Run, RunEvent
from runs.selectors import run_for_user, runs_for_user
from runs.services import ensure_team


@login_required
def runs_list(request):
    ensure_team(request.user)
    runs = runs_for_user(request.user, q=request.GET.get("q", ""), limit=100)
    return render(request, "dashboard/runs_list.html", {"runs": runs, "q": request.GET.get("q", "")})


@login_required
def run_summary(request, run_id: int):
    try:
        run = run_for_user(request.user, run_id)
    except Run.DoesNotExist:
        raise Http404("No such run in your teams") from None
    events = RunEvent.objects.filter(run=run).order_by("at", "pk")
    tail_after = max(0, run.log_lines - 200)
    log_page = logstore.read_lines(run, after=tail_after, limit=200)
    return render(request, "dashboard/run_summary.html", {"run": run, "events": events, "log": log_page})
