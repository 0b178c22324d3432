"""The Terminal tab (/runs/{id}/terminal/): the page; the terminal itself is the websocket."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.views import _run_context, _run_or_404
from terminal.consumers import OPEN_STATUSES


@login_required
@require_GET
def run_terminal(request, run_id: int):
    run = _run_or_404(request, run_id)
    context = _run_context(request, run, "terminal")
    return render(request, "terminal/run_terminal.html", {
        **context, "can_open": context["can_launch"] and run.status in OPEN_STATUSES,
    })
