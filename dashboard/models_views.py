"""The Models pages (SPEC §8): a team's models (/models/), and one model's versions
with their lineage and files (/models/NAME/). The team is ?team= or the user's
first; through runs.access, so another team's model is a 404 like a missing one."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs import model_registry
from runs.access import Action, may, model_for_user, readable_teams, team_for_user
from runs.models import Model, Team

FILES_LISTED = 500


def _team_or_404(request) -> Team | None:
    try:
        return team_for_user(request.user, request.GET.get("team"))
    except Team.DoesNotExist:
        raise Http404("There is no team with this name among yours.") from None


@login_required
@require_GET
def models_list(request):
    team = _team_or_404(request)
    return render(request, "dashboard/models_list.html", {
        "team": team,
        "teams": list(readable_teams(request.user).order_by("name")),
        "summaries": model_registry.team_models(team),
        "may_upload": team is not None and may(request.user, Action.CHANGE, team),
    })


@login_required
@require_GET
def model_detail(request, name: str):
    try:
        model = model_for_user(request.user, request.GET.get("team"), name)
    except (Model.DoesNotExist, Team.DoesNotExist):
        raise Http404("There is no model with this name in your team.") from None
    versions = model_registry.model_versions(model)
    shown = _shown_version(request, versions)
    manifest = shown.archive.manifest if shown else []
    return render(request, "dashboard/model_detail.html", {
        "model": model,
        "team": model.team,
        "versions": versions,
        "latest": next((v for v in versions if v.removed_at is None), None),
        "shown": shown,
        "files": manifest[:FILES_LISTED],
        "unlisted": max(0, len(manifest) - FILES_LISTED),
        "may_upload": may(request.user, Action.CHANGE, model.team),
    })


def _shown_version(request, versions):
    """The version whose files are listed: ?version=N, else the newest."""
    wanted = request.GET.get("version", "")
    for version in versions:
        if str(version.version) == wanted:
            return version
    return versions[0] if versions else None
