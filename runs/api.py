"""HTTP API v1 (SPEC §3): small function views over runs.services and selectors.

Auth is the browser session (then POSTs need the CSRF token) or a bearer token.
Every error is {"detail": ..., "errors": [{"loc", "msg"}]}.
"""

import base64
import functools
import logging
import posixpath
import re
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from runs import logstore, metrics, request_json
from runs.access import Action, NotAllowed, run_for_user, team_for_user
from runs.executors import default_executor_name
from runs.lifecycle import IllegalTransition
from runs.models import ApiToken, Run, RunEvent, RunFile, Status, Team
from runs.selectors import runs_for_user
from runs.services import RunNotFinal, create_run, dry_run, reproduce_run, terminate_run
from runs.slots import attach_queue_positions, queue_position
from runs.spec import SpecError, line_of
from runs.streaming import storage_chunks, stream_response
from runs.throttle import token_refusal

log = logging.getLogger(__name__)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
MAX_BODY_BYTES = 256 * 1024


class ApiError(Exception):
    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []


def error_response(status: int, detail: str, errors: list[dict] | None = None) -> JsonResponse:
    response = JsonResponse({"detail": detail, "errors": errors or []}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="runyard"'
    return response


def _authenticate(request: HttpRequest):
    """The user behind a bearer token or the session; None if neither."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'")
        found = ApiToken.objects.select_related("user").filter(digest=ApiToken.digest_of(token.strip())).first()
        if (refusal := token_refusal(request, valid=found is not None)) is not None:
            raise ApiError(429, refusal, [{"loc": "Authorization", "msg": refusal}])
        if found is None or not found.user.is_active:
            raise ApiError(401, "invalid or revoked token")
        now = timezone.now()
        if found.expires_at is not None and found.expires_at <= now:
            raise ApiError(401, "token expired")
        if found.last_used_at is None or (now - found.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=found.pk).update(last_used_at=now)
        user, how = found.user, "token"
    elif request.user.is_authenticated:
        user, how = request.user, "session"
    else:
        return None, None
    # Nothing here gives the user a team: one in none sees nothing (runs.access).
    return user, how


def _not_found_detail(exc: ObjectDoesNotExist) -> str:
    message = str(exc)
    return message if message.endswith("not found") else f"{type(exc).__qualname__.split('.')[0].lower()} not found"


def api_view(*methods: str, public: bool = False):
    """Method check, auth, CSRF for session POSTs, and errors as JSON."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                response = error_response(405, f"method {request.method} not allowed here")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                _refuse_unstorable_params(request, kwargs)
                if not public:
                    user, how = _authenticate(request)
                    if user is None:
                        raise ApiError(401, "authentication required: a session or 'Authorization: Bearer <token>'")
                    if how == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
                        rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
                        if rejected is not None:
                            raise ApiError(403, "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken")
                    request.user = user
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status, exc.detail, exc.errors)
            except SpecError as exc:
                return error_response(400, getattr(exc, "detail", "") or "the run spec is not valid", exc.errors)
            except IllegalTransition as exc:
                return error_response(409, str(exc))
            except RunNotFinal as exc:
                return error_response(409, str(exc))
            except NotAllowed as exc:
                return error_response(403, str(exc), [{"loc": exc.loc, "msg": str(exc)}] if exc.loc else [])
            except ObjectDoesNotExist as exc:
                # runs.access: another team's object raises exactly what a missing one does.
                errors = [{"loc": "team", "msg": "not a team of yours"}] if isinstance(exc, Team.DoesNotExist) else []
                return error_response(404, _not_found_detail(exc), errors)

        return wrapper

    return decorate


def _refuse_unstorable_params(request: HttpRequest, path_params: dict) -> None:
    """NUL in a query or path parameter would reach PostgreSQL, which refuses it with a 500."""
    params = [(key, value) for key, values in request.GET.lists() for value in (key, *values)]
    params += [(key, value) for key, value in path_params.items() if isinstance(value, str)]
    bad = sorted({key for key, value in params if "\x00" in value})
    if bad:
        raise ApiError(400, "a parameter contains a NUL character", [{"loc": key, "msg": "must not contain NUL (%00)"} for key in bad])


def json_body(request: HttpRequest, *, raw: bool = False):
    """The request's JSON body (None if empty), or its bytes with `raw`; bounded in
    size and nesting (runs.request_json), every bad body a 4xx naming the problem."""
    try:
        if raw:
            return request_json.read_body(request, max_bytes=MAX_BODY_BYTES)
        return request_json.read_json(request, max_bytes=MAX_BODY_BYTES)
    except request_json.BodyError as exc:
        raise ApiError(exc.status, exc.detail, exc.errors) from None


def _int_param(request: HttpRequest, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", [{"loc": name, "msg": "expected an integer"}]) from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{name} must be between {minimum} and {maximum}", [{"loc": name, "msg": f"must be between {minimum} and {maximum}"}])
    return value


def iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def serialize_run(run: Run) -> dict:
    by_status = run.credits_by_status  # once: Run.credits is their sum
    return {
        "id": run.pk,
        "name": run.name,
        "description": run.description,
        "tags": run.tags,
        "status": run.status,
        "status_reason": run.status_reason,
        "exit_code": run.exit_code,
        "owner": run.owner.get_username(),
        "team": run.team.name,
        "created_at": iso(run.created_at),
        "initializing_at": iso(run.initializing_at),
        "started_at": iso(run.started_at),
        "stopping_at": iso(run.stopping_at),
        "idle_at": iso(run.idle_at),
        "finished_at": iso(run.finished_at),
        "stop_deadline": iso(run.stop_deadline),
        "duration_seconds": run.duration_seconds,
        "progress": run.progress,
        "eta_seconds": run.eta_seconds,
        "stalled": run.stalled,
        "reports_malformed": run.reports_malformed,
        "summary": run.summary,
        "credits": str(sum(by_status.values(), Decimal("0.0000"))),
        "credits_by_status": {status: str(amount) for status, amount in by_status.items()},
        "preset": run.preset.name,
        "image": run.image,
        "image_digest": run.image_digest or None,
        "spec": run.spec,
        "reproduced_from": run.reproduced_from_id,
        "executor": run.executor,
        "cluster": run.cluster.name if run.cluster_id else "default",
        "node": run.node or None,
        "log_lines": run.log_lines,
        "imports": run.imports,
        "changes": run.changes,
        "warnings": run.warnings,
        "exports_state": run.exports_state or None,
        "queue_position": queue_position(run),  # 1-based in the team's queue while pending (runs.slots)
        "url": f"/runs/{run.pk}/",
    }


@api_view("GET", public=True)
def health(request):
    try:
        connection.ensure_connection()
        database = connection.vendor
        ok = True
    except Exception as exc:
        database, ok = f"unreachable: {exc.__class__.__name__}", False
    broker = "in-process" if settings.RUNYARD_TASKS_IN_PROCESS else _broker_state()
    body = {"status": "ok" if ok else "error", "executor": default_executor_name(), "database": database, "broker": broker}
    return JsonResponse(body, status=200 if ok else 503)


def _broker_state() -> str:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
        return "redis"
    except Exception as exc:
        return f"redis unreachable: {exc.__class__.__name__}"


@api_view("GET", "POST")
def runs_collection(request):
    if request.method == "POST":
        return _create(request)
    return _list(request)


def _create(request):
    content_type = request.content_type or ""
    # Checked before the body is read: the CSRF check may have parsed a form's stream already.
    if content_type != "application/json" and content_type not in YAML_TYPES and content_type != "":
        raise ApiError(415, f"send the spec as application/yaml or application/json, not {content_type}")
    # YAML goes to the spec parser as bytes: it bounds YAML's nesting and aliases itself.
    source = json_body(request) if content_type == "application/json" else json_body(request, raw=True)
    team = team_param(request, Action.CHANGE)
    if _bool_param(request, "dry_run"):
        return JsonResponse(_dry_run_answer(request.user, source, team))
    run = create_run(user=request.user, source=source, team=team)
    run = Run.objects.select_related("owner", "team", "preset", "cluster").get(pk=run.pk)
    response = JsonResponse(serialize_run(run), status=201)
    response["Location"] = f"/api/v1/runs/{run.pk}"
    return response


def _dry_run_answer(user, source, team) -> dict:
    """services.dry_run, with the line of the YAML each problem is on (null for JSON)."""
    answer = dry_run(user=user, source=source, team=team)
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else None
    for problem in answer["errors"] + answer["warnings"]:
        named = re.search(r"\bline (\d+)", problem["msg"])  # a YAML error or a template names its line itself
        problem["line"] = (line_of(text, problem["loc"]) or (int(named.group(1)) if named else None)) if text is not None else None
    return answer


def _bool_param(request: HttpRequest, name: str) -> bool:
    raw = request.GET.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"{name} must be true or false", [{"loc": name, "msg": "expected true or false"}])


def team_param(request, action: Action = Action.READ) -> Team | None:
    """The team of ?team=, or the user's first team where `action` is allowed.
    None only for a read by a user in no team (who then sees nothing)."""
    return team_for_user(request.user, request.GET.get("team"), action)


def _list(request):
    statuses = [s for s in request.GET.getlist("status") if s]  # an empty ?status= (a form's "any") filters nothing
    unknown = [s for s in statuses if s not in Status.values]
    if unknown:
        raise ApiError(400, "unknown status", [{"loc": "status", "msg": f"unknown status {s!r}; one of {', '.join(Status.values)}"} for s in unknown])
    limit = _int_param(request, "limit", 50, 1, 200)
    before = None
    if request.GET.get("cursor"):
        try:
            before = int(base64.urlsafe_b64decode(request.GET["cursor"].encode()).decode())
        except ValueError:
            raise ApiError(400, "invalid cursor", [{"loc": "cursor", "msg": "pass back next_cursor exactly"}]) from None
    runs = runs_for_user(
        request.user, statuses=statuses, tag=request.GET.get("tag", ""), q=request.GET.get("q", ""),
        owner=request.GET.get("owner", ""), before_id=before, limit=limit + 1,
    )
    page = list(runs)
    more = len(page) > limit
    page = attach_queue_positions(page[:limit])
    next_cursor = base64.urlsafe_b64encode(str(page[-1].pk).encode()).decode() if more and page else None
    return JsonResponse({"items": [serialize_run(r) for r in page], "next_cursor": next_cursor})


@api_view("GET")
def run_detail(request, run_id: int):
    return JsonResponse(serialize_run(run_for_user(request.user, run_id)))


@api_view("GET")
def run_events(request, run_id: int):
    run = run_for_user(request.user, run_id)
    events = RunEvent.objects.filter(run=run).order_by("at", "pk")
    return JsonResponse(
        [{"from": e.from_status, "to": e.to_status, "at": iso(e.at), "actor": e.actor_name, "reason": e.reason} for e in events],
        safe=False,
    )


@api_view("POST")
def run_terminate(request, run_id: int):
    run = run_for_user(request.user, run_id)
    run = terminate_run(run, actor=request.user)
    return JsonResponse(serialize_run(run_for_user(request.user, run.pk)), status=202)


@api_view("POST")
def run_reproduce(request, run_id: int):
    run = run_for_user(request.user, run_id)
    overrides = json_body(request)  # None for no body: the same spec
    new = reproduce_run(run, actor=request.user, overrides=overrides)
    response = JsonResponse(serialize_run(run_for_user(request.user, new.pk)), status=201)
    response["Location"] = f"/api/v1/runs/{new.pk}"
    return response


@api_view("GET")
def run_logs(request, run_id: int):
    run = run_for_user(request.user, run_id)
    after = _int_param(request, "after", 0, 0, 2**31)
    limit = _int_param(request, "limit", 1000, 1, 10000)
    return JsonResponse(logstore.read_lines(run, after=after, limit=limit))


@api_view("GET")
def run_logs_search(request, run_id: int):
    run = run_for_user(request.user, run_id)
    query = request.GET.get("q", "")
    if not query.strip():
        raise ApiError(400, "q is required", [{"loc": "q", "msg": "required"}])
    after = _int_param(request, "after", 0, 0, 2**31)
    limit = _int_param(request, "limit", 200, 1, 1000)
    return JsonResponse(logstore.search(run, query, after=after, limit=limit))


@api_view("GET")
def run_logs_text(request, run_id: int):
    run = run_for_user(request.user, run_id)
    chunks = (text.encode() for text in logstore.iter_text(run))
    return stream_response(request, chunks, "text/plain; charset=utf-8", filename=f"run-{run.pk}.log", attachment=False, uses_database=True)


def _float_param(request: HttpRequest, name: str) -> float | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(400, f"{name} must be a number", [{"loc": name, "msg": "expected a finite number"}])
    return value


@api_view("GET")
def run_metrics(request, run_id: int):
    run = run_for_user(request.user, run_id)
    return JsonResponse({"keys": metrics.keys(run), "reports_malformed": run.reports_malformed})


@api_view("GET")
def run_metric(request, run_id: int, key: str):
    run = run_for_user(request.user, run_id)
    x = request.GET.get("x") or "step"
    if x not in metrics.X_AXES:
        raise ApiError(400, "unknown x axis", [{"loc": "x", "msg": f"one of {', '.join(metrics.X_AXES)}"}])
    max_points = _int_param(request, "max_points", 1000, 2, 100_000)
    found = metrics.series(run, key, x=x, max_points=max_points,
                           x_min=_float_param(request, "x_min"), x_max=_float_param(request, "x_max"))
    if found is None:
        raise ApiError(404, f"run {run.pk} has no metric {key!r}")
    return JsonResponse(found)


@api_view("GET")
def run_files(request, run_id: int):
    """The exported files under ?path= (default: all export roots), one level deep."""
    run = run_for_user(request.user, run_id)
    base = request.GET.get("path", "").rstrip("/")
    rows = RunFile.objects.filter(run=run).values_list("path", "size", "sha256", "partial")
    entries: dict[str, dict] = {}
    for path, size, sha256, partial in rows:
        if base and not path.startswith(base + "/"):
            continue
        rest = path[len(base) + 1 :] if base else path.lstrip("/")
        head, sep, _ = rest.partition("/")
        if sep:
            child = f"{base}/{head}"
            entry = entries.setdefault(child, {"path": child, "size": 0, "is_dir": True, "files": 0})
            entry["size"] += size
            entry["files"] += 1
        else:
            entries[path] = {"path": path, "size": size, "is_dir": False, "sha256": sha256, "partial": partial}
    if base and not entries and not RunFile.objects.filter(run=run, path=base).exists():
        raise ApiError(404, f"no exported files under {base}")
    return JsonResponse({"path": base or "/", "exports_state": run.exports_state or None,
                         "entries": sorted(entries.values(), key=lambda e: (not e["is_dir"], e["path"]))})


@api_view("GET")
def run_file_raw(request, run_id: int):
    run = run_for_user(request.user, run_id)
    found = RunFile.objects.filter(run=run, path=request.GET.get("path", "")).first()
    if found is None:
        raise ApiError(404, "no such exported file", [{"loc": "path", "msg": "not an exported file of this run"}])
    response = stream_response(request, storage_chunks(found.storage_name), "application/octet-stream", filename=posixpath.basename(found.path))
    response["Content-Length"] = str(found.size)
    response["X-Content-SHA256"] = found.sha256
    return response


@csrf_exempt  # a POST to no endpoint is a JSON 404, not the CSRF middleware's HTML 403
def not_found(request, path=""):
    return error_response(404, f"no API endpoint at /api/v1/{path}")


# Django's own error pages (dashboard/urls.py handler400/403/404/500): under /api/
# they answer in the API's shape, so a client never has to parse an HTML page.
def _api_error_or_page(status: int, detail: str, page_view):
    def handler(request, exception=None):
        if request.path.startswith("/api/"):
            return error_response(status, detail)
        return page_view(request) if exception is None else page_view(request, exception)

    handler.__name__ = f"error_{status}"
    return handler


bad_request = _api_error_or_page(400, "the request could not be read (too large, or malformed)", defaults.bad_request)
permission_denied = _api_error_or_page(403, "forbidden", defaults.permission_denied)
page_not_found = _api_error_or_page(404, "no such API endpoint or object", defaults.page_not_found)
server_error = _api_error_or_page(500, "internal error: the request was not carried out; please report it", defaults.server_error)
