"""The Compare page (/compare/?runs=1,2,3): runs side by side, as W&B and ClearML
compare them: a colour per run, one chart per metric with a trace per run (the
browser reads each series from the metrics API, thinned on the server), the spec
fields that differ, and the runs' summaries."""

import json

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs.access import visible_runs
from runs.models import MetricChunk

MAX_RUNS = 10
MAX_PIECES = 50  # of a ?runs= list read at all: a note for each, and no more
# Told apart by colour-blind readers too (Okabe-Ito, then two more).
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000", "#999999", "#7B3294"]


def requested_ids(values: list[str]) -> tuple[list[int], list[str]]:
    """Run numbers from `?runs=1,2,3` (or `?runs=1&runs=2`), in order, once each;
    and a note for each piece that is not a run number."""
    ids, notes = [], []
    pieces = [p.strip() for value in values for p in value.split(",") if p.strip()]
    if len(pieces) > MAX_PIECES:
        notes.append(f"Only the first {MAX_PIECES} of {len(pieces)} numbers are read.")
    for piece in pieces[:MAX_PIECES]:
        if not piece.isdigit() or len(piece) > 18:
            notes.append(f"“{piece[:40]}” is not a run number, so it is left out.")
        elif int(piece) not in ids:
            ids.append(int(piece))
    return ids, notes


def _env_text(value) -> str:
    # A secret is named, never shown: its value is not in the spec anyway.
    if isinstance(value, dict):
        return "secret (inline)" if value.get("inline_secret") else f"secret {value.get('secret')}"
    return str(value)


def _import_text(item: dict) -> str:
    if item.get("kind") == "git":
        return f"git {item.get('url')} {item.get('ref')} @ {str(item.get('commit', ''))[:12]}"
    if item.get("kind") == "dataset":
        return f"dataset {item.get('name')}@{item.get('version')}"
    if item.get("kind") == "model":
        return f"model {item.get('name')} version {item.get('version')}"
    if item.get("kind") == "run_files":
        return f"run {item.get('run')} files under {item.get('run_path')} ({str(item.get('content_hash', ''))[:12]})"
    return f"code {str(item.get('content_hash', ''))[:12]}"


def comparable_fields(run) -> dict[str, str]:
    """The spec fields worth comparing, as text: image, each command, each env
    variable (secrets by name), resources, each import."""
    spec = run.spec
    fields = {"image": run.image, "image digest": run.image_digest or "—"}
    for number, step in enumerate(spec.get("run") or [], 1):
        command = step.get("command", "") if isinstance(step, dict) else str(step)
        workdir = step.get("workdir") if isinstance(step, dict) else None
        fields[f"run[{number}]"] = command + (f"  (in {workdir})" if workdir else "")
    for name, value in sorted((spec.get("env") or {}).items()):
        fields[f"env.{name}"] = _env_text(value)
    for name, value in sorted((spec.get("resources") or {}).items()):
        fields[f"resources.{name}"] = json.dumps(value) if not isinstance(value, str) else value
    for item in run.imports or []:
        fields[f"import {item.get('path')}"] = _import_text(item)
    return fields


def spec_differences(runs: list) -> list[tuple[str, list[str]]]:
    """(field, the value in each run) for each field that is not the same in all."""
    per_run = [comparable_fields(run) for run in runs]
    names = []
    for fields in per_run:
        names += [name for name in fields if name not in names]
    rows = []
    for name in names:
        values = [fields.get(name, "—") for fields in per_run]
        if len(set(values)) > 1:
            rows.append((name, values))
    return rows


def summary_rows(runs: list) -> list[tuple[str, list]]:
    names = sorted({name for run in runs for name in run.summary})
    return [(name, [run.summary.get(name, "—") for run in runs]) for name in names]


def metric_names(runs: list) -> dict[int, list[str]]:
    """Each run's metric names, in one query for all of them."""
    names: dict[int, list[str]] = {}
    rows = MetricChunk.objects.filter(run__in=runs).values_list("run_id", "key").distinct().order_by("run_id", "key")
    for run_id, key in rows:
        names.setdefault(run_id, []).append(key)
    return names


@login_required
@require_GET
def compare_runs(request):
    ids, notes = requested_ids(request.GET.getlist("runs"))
    if len(ids) > MAX_RUNS:
        notes.append(f"Only the first {MAX_RUNS} runs are compared; {len(ids) - MAX_RUNS} more are left out.")
        ids = ids[:MAX_RUNS]
    found = visible_runs(request.user).select_related("owner", "team").in_bulk(ids)
    # Another team's run is left out exactly as a missing one is: its number says nothing.
    notes += [f"There is no run #{pk} in your teams, so it is left out." for pk in ids if pk not in found]
    runs = [found[pk] for pk in ids if pk in found]
    names = metric_names(runs)
    keyed = [(run, COLOURS[index % len(COLOURS)], names.get(run.pk, [])) for index, run in enumerate(runs)]
    chart_data = {
        "runs": [{"id": run.pk, "name": f"#{run.pk} {run.name}", "colour": colour, "keys": keys}
                 for run, colour, keys in keyed],
        "keys": sorted({key for _, _, keys in keyed for key in keys}),
    }
    return render(request, "dashboard/compare.html", {
        "runs": [(run, colour) for run, colour, _ in keyed],
        "notes": notes,
        "differences": spec_differences(runs) if len(runs) > 1 else [],
        "summaries": summary_rows(runs),
        "chart_data": chart_data,
    })
