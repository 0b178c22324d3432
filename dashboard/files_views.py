"""The Files tab: a run's exported files, browsed, previewed and downloaded."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.views import _run_context, _run_or_404

urlpatterns = []


@login_required
@require_GET
def run_files(request, run_id: int):
    run = _run_or_404(request, run_id)
    return render(request, "dashboard/run_files.html", _run_context(request, run, "files"))
