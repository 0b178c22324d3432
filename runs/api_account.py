"""API v1 for the caller's own account: their tokens and their teams (SPEC §3).

GET, POST /tokens            the caller's tokens (never their secret); a new one, shown once
DELETE /tokens/{id}          revoke one of the caller's tokens (another user's is 404)
GET /teams                   the caller's teams and their role in each
GET, PATCH /teams/{name}     a team's settings and usage; PATCH by its admins (and superusers)
"""


from django.db import transaction
from django.db.models import Count
from django.http import HttpResponse, JsonResponse

from runs import tokens
from runs.access import Action, readable_teams, team_for_user
from runs.api import ApiError, api_view, iso, json_body
from runs.lifecycle import LIVE
from runs.models import ApiToken, Membership, Run, Status, Team
from runs.tasks import enqueue_dispatch

# Team.max_running is a PostgreSQL integer.
MAX_RUNNING_TOP = 2**31 - 1
LIVE_STATUSES = [status for status in Status.values if status in LIVE]


def json_object(request, fields: tuple[str, ...]) -> dict:
    """The body as a JSON object holding only `fields`; an empty body is {}."""
    body = json_body(request)  # bounded in size and depth, like every JSON body of the API
    if body is None and not request.body:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", [{"loc": "", "msg": "expected an object"}])
    unknown = [key for key in body if key not in fields]
    if unknown:
        raise ApiError(400, f"unknown field: {', '.join(map(str, unknown))}",
                       [{"loc": str(key), "msg": f"unknown field (known: {', '.join(fields)})"} for key in unknown])
    return body


# ---------------------------------------------------------------- tokens


def token_json(token: ApiToken) -> dict:
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "last_used_at": iso(token.last_used_at),
    }


@api_view("GET", "POST")
def tokens_collection(request):
    if request.method == "GET":
        return JsonResponse({"items": [token_json(t) for t in tokens.tokens_of(request.user)]})
    body = json_object(request, ("name", "expires_in_days"))
    try:
        token, secret = tokens.issue(request.user, body.get("name"), body.get("expires_in_days"))
    except tokens.TokenInputError as exc:
        raise ApiError(400, f"{exc.loc}: {exc}", [{"loc": exc.loc, "msg": str(exc)}]) from None
    response = JsonResponse({**token_json(token), "token": secret}, status=201)
    response["Location"] = f"/api/v1/tokens/{token.pk}"
    return response


@api_view("DELETE")
def token_detail(request, token_id: int):
    if not tokens.revoke(request.user, token_id):
        raise ApiError(404, "token not found")
    return HttpResponse(status=204)


# ---------------------------------------------------------------- teams


def _roles(user) -> dict[int, str]:
    return dict(Membership.objects.filter(user=user).values_list("team_id", "role"))


def team_json(team: Team, role: str | None) -> dict:
    counts = dict(Run.objects.filter(team=team, status__in=LIVE_STATUSES).values_list("status").annotate(n=Count("pk")))
    return {
        "name": team.name,
        "role": role,
        "max_running": team.max_running,
        "usage": {status: counts.get(status, 0) for status in LIVE_STATUSES},
    }


@api_view("GET")
def teams_collection(request):
    roles = _roles(request.user)
    teams = readable_teams(request.user).order_by("name")
    return JsonResponse({"items": [{"name": t.name, "role": roles.get(t.pk), "max_running": t.max_running} for t in teams]})


@api_view("GET", "PATCH")
def team_detail(request, name: str):
    action = Action.ADMINISTER if request.method == "PATCH" else Action.READ
    team = team_for_user(request.user, name, action)  # another team's is 404, a member's PATCH 403
    if request.method == "PATCH":
        body = json_object(request, ("max_running",))
        if "max_running" in body:
            team.max_running = _max_running(body["max_running"])
            Team.objects.filter(pk=team.pk).update(max_running=team.max_running)
            # A raised cap starts waiting runs now, not at the next reconcile.
            transaction.on_commit(enqueue_dispatch)
    return JsonResponse(team_json(team, _roles(request.user).get(team.pk)))


def _max_running(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RUNNING_TOP:
        raise ApiError(400, "max_running must be a non-negative integer or null",
                       [{"loc": "max_running", "msg": "expected a non-negative integer, or null for no cap"}])
    return value
