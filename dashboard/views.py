"""The web pages (SPEC §5). Server-rendered; every view checks access through
runs.access, and every action goes through runs.services."""

import json
import re
from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard import run_columns
from dashboard.run_rows import links, row_html
from runs import metrics
from runs.access import Action, NotAllowed, default_team, may, run_for_user, visible_runs
from runs.lifecycle import IllegalTransition
from runs.models import Run, RunEvent, Status
from runs.selectors import runs_for_user
from runs.services import RunNotFinal, create_run, reproduce_run, terminate_run
from runs.slots import attach_queue_positions
from runs.spec import MAX_SPEC_BYTES, SpecError, dump_spec_yaml, format_duration, line_of
from runs.system_metrics import is_system_key

PAGE_SIZE = 50
# What a row of the list (dashboard/run_rows.py) never shows: not read for it.
ROW_UNREAD = ("spec", "description", "imports", "changes", "warnings", "image", "image_digest", "container_id")
EXAMPLES_DIR = Path(settings.BASE_DIR) / "examples"


def _run_or_404(request, run_id: int) -> Run:
    try:
        return run_for_user(request.user, run_id)
    except Run.DoesNotExist:
        raise Http404("There is no run with this number in your teams.") from None


@login_required
@require_GET
def runs_list(request):
    statuses = [s for s in request.GET.getlist("status") if s in Status.values]
    filters = {"statuses": statuses, "tag": request.GET.get("tag", "").strip(),
               "q": request.GET.get("q", "").strip(), "owner": request.GET.get("owner", "").strip()}
    try:
        before = int(request.GET.get("before", "")) if request.GET.get("before") else None
    except ValueError:
        before = None
    columns, column_notes = run_columns.parse_columns(request.GET.get("columns", ""))
    sort, descending = run_columns.sort_column(request.GET.get("sort", ""), columns)
    # Sorted by a reported value, the list pages by position; else newest first by id.
    start = _whole_number(request.GET.get("start")) if sort else 0
    page = list(runs_for_user(request.user, before_id=None if sort else before, limit=PAGE_SIZE + 1,
                              order=sort.ordering(descending) if sort else None, offset=start,
                              unread=ROW_UNREAD, **filters))
    more = len(page) > PAGE_SIZE
    page = _with_column_values(attach_queue_positions(page[:PAGE_SIZE]), columns)
    row_query = _row_query(columns)
    urls = links()
    for run in page:
        run.row_html = row_html(run, row_query, urls)
    older = request.GET.copy()
    if more and sort:
        older["start"] = start + PAGE_SIZE
    elif more:
        older["before"] = page[-1].pk
    context = {
        "runs": page,
        "columns": columns,
        "column_notes": column_notes,
        "column_suggestions": run_columns.suggestions(page),
        "sort": ("-" if descending else "") + sort.name if sort else "",
        "columns_text": ", ".join(column.name for column in columns),
        "column_heads": _column_heads(request, columns, sort, descending),
        "filters": filters,
        "all_statuses": Status.choices,
        "older_query": older.urlencode() if more else "",
        "filtered": any(filters.values()) or before is not None or bool(start),
        "first_page": before is None and not start,
        "row_query": row_query,
        "any_runs": bool(page) or visible_runs(request.user).exists(),
    }
    # htmx (the filters, the live table) asks for the table alone, at the page's own URL.
    template = "dashboard/_runs_table.html" if request.headers.get("HX-Request") else "dashboard/runs_list.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])  # a cache must not answer the page with the table
    return response


@login_required
@require_GET
def run_row(request, run_id: int):
    """One row of the runs list: what the live list swaps in when its run changes."""
    columns, _ = run_columns.parse_columns(request.GET.get("columns", ""))
    run = _with_column_values(attach_queue_positions([_run_or_404(request, run_id)]), columns)[0]
    run.row_html = row_html(run, _row_query(columns))
    return render(request, "dashboard/_run_row.html", {"run": run})


def _row_query(columns) -> str:
    """The query a live row reads itself again with: the list's chosen columns."""
    return urlencode({"columns": ",".join(column.name for column in columns)}) if columns else ""


def _column_heads(request, columns, sort, descending) -> list[tuple]:
    """(column, the query that sorts by it, "ascending"/"descending"/"") for each chosen column.
    A first click sorts descending (the best accuracy first), a second ascending."""
    heads = []
    for column in columns:
        query = request.GET.copy()
        query.pop("start", None)
        query.pop("before", None)
        current = "descending" if column == sort and descending else "ascending" if column == sort else ""
        query["sort"] = column.name if current == "descending" else "-" + column.name
        heads.append((column, query.urlencode(), current))
    return heads


def _whole_number(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) < 10 else 0


def _with_column_values(runs: list[Run], columns: list) -> list[Run]:
    """Each run's values for the chosen columns, as shown: numbers to 6 significant digits."""
    for run in runs:
        values = (column.value(run) for column in columns)
        run.column_values = ["—" if v is None else v if isinstance(v, str) else f"{v:.6g}" for v in values]
    return runs


def _examples() -> list[dict]:
    return [{"name": path.stem, "yaml": path.read_text()} for path in sorted(EXAMPLES_DIR.glob("*.yaml"))]


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request):
    team = default_team(request.user, Action.CHANGE)  # None: in no team where the user may launch
    source, errors = "", []
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is not None and upload.size > MAX_SPEC_BYTES:  # refused unread
            source = request.POST.get("spec", "")
            errors = [{"loc": "file", "msg": f"{upload.name} is {upload.size:,} bytes: a run spec can be at most 256 KiB"}]
        else:
            source = upload.read().decode("utf-8", "replace") if upload else request.POST.get("spec", "")
            try:
                run = create_run(user=request.user, source=source, team=team)
            except SpecError as exc:
                errors = [{**error, "line": line_of(source, error["loc"])} for error in exc.errors]
            except NotAllowed as exc:
                errors = [{"loc": exc.loc, "msg": str(exc)}]
            else:
                messages.success(request, f"Run #{run.pk} {run.name} created.")
                return redirect("run-summary", run.pk)
    examples = _examples()
    return render(request, "dashboard/run_new.html", {
        "source": source or (examples[0]["yaml"] if examples and request.method == "GET" else source),
        "errors": errors, "examples": examples, "examples_json": json.dumps({e["name"]: e["yaml"] for e in examples}),
        "can_launch": team is not None, "team": team, "in_a_team": default_team(request.user) is not None,
    }, status=400 if errors else 200)


def _phases(run: Run, events: list[RunEvent]) -> list[dict]:
    """The timeline: each status entered, by whom, why, and how long it lasted."""
    phases = []
    for index, event in enumerate(events):
        ended = events[index + 1].at if index + 1 < len(events) else None
        phases.append({"event": event, "seconds": (ended - event.at).total_seconds() if ended else None})
    return phases


def _run_context(request, run: Run, tab: str) -> dict:
    return {"run": run, "tab": tab, "can_launch": may(request.user, Action.CHANGE, run.team)}


def _summary_context(request, run_id: int) -> dict:
    run = attach_queue_positions([_run_or_404(request, run_id)])[0]
    events = list(RunEvent.objects.filter(run=run).order_by("at", "pk"))
    reproductions = list(run.reproductions.order_by("pk").values_list("pk", "name", "status"))
    return {
        **_run_context(request, run, "summary"),
        "phases": _phases(run, events),
        "reproductions": reproductions,
        "changes": [(key, json.dumps(change["from"]), json.dumps(change["to"])) for key, change in run.changes.items()],
        "spec_yaml": dump_spec_yaml(run.spec),
        "summary_items": [(name, value, not isinstance(value, str)) for name, value in sorted(run.summary.items())],
        "made_models": list(run.model_versions_made.select_related("model").order_by("model__name")),
        "made_datasets": list(run.dataset_versions_made.select_related("dataset").order_by("dataset__name")),
    }


@login_required
@require_GET
def run_summary(request, run_id: int):
    return render(request, "dashboard/run_summary.html", _summary_context(request, run_id))


# The pieces of the run pages that read themselves again when live_runs.js says the
# run changed (hx-trigger in their templates).

@login_required
@require_GET
def run_summary_body(request, run_id: int):
    """The Summary tab under the header: facts, lineage, summary values, timeline."""
    return render(request, "dashboard/_summary_body.html", _summary_context(request, run_id))


@login_required
@require_GET
def run_progress(request, run_id: int):
    """The Summary tab's Progress fact, read again on its own as progress is reported,
    so a reader's selection elsewhere on the tab stays."""
    return render(request, "dashboard/_progress_fact.html", {"run": _run_or_404(request, run_id)})


@login_required
@require_GET
def run_head(request, run_id: int):
    """The header of every run page."""
    run = _run_or_404(request, run_id)
    return render(request, "dashboard/_run_head.html", _run_context(request, run, ""))


@login_required
@require_GET
def run_logs(request, run_id: int):
    return render(request, "dashboard/run_logs.html", _run_context(request, _run_or_404(request, run_id), "logs"))


@login_required
@require_GET
def run_plots(request, run_id: int):
    run = _run_or_404(request, run_id)
    keys = metrics.keys(run)
    return render(request, "dashboard/run_plots.html", {
        **_run_context(request, run, "plots"), "metric_keys": keys,
        # Its CPU and memory (sys/...) are Runyard's readings, not metrics the run reported.
        "reported_metrics": any(not is_system_key(key) for key in keys),
    })


@login_required
@require_POST
def run_terminate(request, run_id: int):
    run = _run_or_404(request, run_id)
    try:
        terminate_run(run, actor=request.user)
        messages.success(request, f"Run #{run.pk} terminated: SIGTERM now, SIGKILL after {run.termination_grace:g} s.")
    except (IllegalTransition, NotAllowed) as exc:
        messages.error(request, str(exc))
    return redirect("run-summary", run.pk)


@login_required
@require_http_methods(["GET", "POST"])
def run_reproduce(request, run_id: int):
    run = _run_or_404(request, run_id)
    errors = []
    env_text = "\n".join(f"{k}={v}" for k, v in run.spec.get("env", {}).items() if isinstance(v, str))
    commands_text = "\n".join(_step_line(step) for step in run.spec.get("run", []))
    if request.method == "POST":
        overrides = None
        if request.POST.get("mode") == "changed":
            env_text = request.POST.get("env", "")
            commands_text = request.POST.get("commands", "")
            overrides, errors = _overrides_from_form(run, env_text, commands_text, request.POST.get("preset", ""))
        if not errors:
            try:
                new = reproduce_run(run, actor=request.user, overrides=overrides)
            except SpecError as exc:
                errors = exc.errors
            except (RunNotFinal, NotAllowed) as exc:
                errors = [{"loc": "", "msg": str(exc)}]
            else:
                messages.success(request, f"Run #{new.pk} reproduces #{run.pk}.")
                return redirect("run-summary", new.pk)
    from runs.models import ResourcePreset

    return render(request, "dashboard/run_reproduce.html", {
        **_run_context(request, run, "summary"),
        "spec_yaml": dump_spec_yaml(run.spec), "errors": errors, "env_text": env_text, "commands_text": commands_text,
        "presets": ResourcePreset.objects.order_by("name"), "current_preset": run.spec["resources"]["preset"],
    }, status=400 if errors else 200)


# The reproduce form lists one step a line; a wait step reads "wait: 10s" there (no
# command is called "wait:", so the line cannot mean anything else).
_WAIT_LINE = re.compile(r"wait:\s*(\S+)")


def _step_line(step: dict) -> str:
    return f"wait: {format_duration(step['wait_seconds'])}" if "wait_seconds" in step else step["command"]


def _line_step(line: str) -> dict:
    wait = _WAIT_LINE.fullmatch(line.strip())
    return {"wait": wait.group(1)} if wait else {"command": line}


def _overrides_from_form(run: Run, env_text: str, commands_text: str, preset: str) -> tuple[dict, list]:
    env, errors = {}, []
    for number, line in enumerate(env_text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            errors.append({"loc": "env", "msg": f"line {number}: expected NAME=value"})
        else:
            env[name.strip()] = value
    # Variables the form no longer lists are removed; secrets stay as they were.
    for name, value in run.spec.get("env", {}).items():
        if isinstance(value, str) and name not in env:
            env[name] = None
    commands = [_line_step(line) for line in commands_text.splitlines() if line.strip()]
    workdirs = [step.get("workdir") for step in run.spec.get("run", [])]
    for index, step in enumerate(commands):
        if index < len(workdirs) and workdirs[index] and "command" in step:
            step["workdir"] = workdirs[index]
    overrides = {"env": env, "run": commands}
    if preset:
        overrides["resources"] = {"preset": preset}
    return overrides, errors
