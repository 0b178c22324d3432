"""API v1 for the caller's own account: their tokens and their teams (SPEC §3).

GET, POST /tokens            the caller's tokens (never their secret); a new one, shown once
DELETE /tokens/{id}          revoke one of the caller's tokens (another user's is 404)
GET /teams                   the caller's teams and their role in each
GET, PATCH /teams/{name}     a team's settings and usage; PATCH by its admins (and superusers)
"""


from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.db.models import Count
from django.http import HttpResponse, JsonResponse

from runs import tokens
from runs.credits import team_credits_by_status
from runs.access import Action, readable_teams, team_for_user
from runs.api import ApiError, api_view, iso, json_body
from runs.lifecycle import LIVE
from runs.models import ApiToken, Membership, Run, Status, Team
from runs.tasks import enqueue_dispatch

# Team.max_running and idle_limit_seconds are PostgreSQL integers.
MAX_RUNNING_TOP = 2**31 - 1
# Team.credit_limit: 14 digits, 4 of them after the point.
CREDIT_LIMIT_TOP = Decimal("9999999999.9999")
TEAM_SETTINGS = ("max_running", "credit_limit", "idle_limit_seconds")
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
    used = team_credits_by_status(team.pk)
    return {
        "name": team.name,
        "role": role,
        "max_running": team.max_running,
        "credit_limit": str(team.credit_limit) if team.credit_limit is not None else None,
        "idle_limit_seconds": team.idle_limit_seconds,
        "usage": {
            **{status: counts.get(status, 0) for status in LIVE_STATUSES},
            "credits": str(sum(used.values(), Decimal("0.0000"))),
            "credits_by_status": {status: str(amount) for status, amount in used.items()},
        },
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
        body = json_object(request, TEAM_SETTINGS)
        changes = _team_settings(body)
        if changes:
            for name, value in changes.items():
                setattr(team, name, value)
            Team.objects.filter(pk=team.pk).update(**changes)
            # A raised cap or limit starts waiting runs now, not at the next reconcile.
            transaction.on_commit(enqueue_dispatch)
    return JsonResponse(team_json(team, _roles(request.user).get(team.pk)))


def _team_settings(body: dict) -> dict:
    """The settings in the body, checked: every bad one a 400 naming its field."""
    checks = {"max_running": _max_running, "credit_limit": _credit_limit, "idle_limit_seconds": _idle_limit_seconds}
    changes, errors = {}, []
    for name in TEAM_SETTINGS:
        if name not in body:
            continue
        try:
            changes[name] = checks[name](body[name])
        except ApiError as exc:
            errors += exc.errors
    if errors:
        raise ApiError(400, "; ".join(f"{e['loc']}: {e['msg']}" for e in errors), errors)
    return changes


def _credit_limit(value) -> Decimal | None:
    if value is None:
        return None
    problem = 'expected a decimal string such as "500" or "12.5", or null for no limit'
    try:
        amount = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise ApiError(400, "credit_limit must be a decimal string or null", [{"loc": "credit_limit", "msg": problem}])
    if not 0 <= amount <= CREDIT_LIMIT_TOP or amount != amount.quantize(Decimal("0.0001")):
        raise ApiError(400, "credit_limit is out of range", [{"loc": "credit_limit",
                       "msg": f"must be between 0 and {CREDIT_LIMIT_TOP}, with at most 4 decimal places"}])
    return amount.quantize(Decimal("0.0001"))  # as the database gives it back


def _idle_limit_seconds(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNNING_TOP:
        raise ApiError(400, "idle_limit_seconds must be a positive integer or null",
                       [{"loc": "idle_limit_seconds", "msg": "expected a whole number of seconds (at least 1), or null for no limit"}])
    return value


def _max_running(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RUNNING_TOP:
        raise ApiError(400, "max_running must be a non-negative integer or null",
                       [{"loc": "max_running", "msg": "expected a non-negative integer, or null for no cap"}])
    return value
