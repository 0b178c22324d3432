"""API v1 for models (SPEC §8): list them, a model's versions with their lineage,
one version's files, and uploading a version."""

import posixpath

from django.http import JsonResponse

from runs import model_registry
from runs.access import model_for_user
from runs.api import ApiError, api_view, iso, team_param
from runs.api_inputs import check_name, store_archive
from runs.archives import read_member
from runs.models import ModelVersion, Run
from runs.streaming import stream_response


def run_ref(run: Run | None) -> dict | None:
    return None if run is None else {"id": run.pk, "name": run.name, "status": run.status, "url": f"/runs/{run.pk}/"}


def version_json(version: ModelVersion, name: str, *, used_by: list[Run] | None = None) -> dict:
    archive = version.archive
    body = {
        "name": name,
        "version": version.version,
        "content_hash": archive.content_hash,
        "size_bytes": archive.size_bytes,
        "file_count": archive.file_count,
        "created_at": iso(version.created_at),
        "created_by": version.created_by.get_username() if version.created_by else None,
        "made_by_run": run_ref(version.run),
        "removed": version.removed_at is not None,
    }
    if used_by is not None:
        body["used_by_runs"] = [run_ref(run) for run in used_by]
    return body


@api_view("GET")
def models(request):
    team = team_param(request)  # None: the user is in no team, and sees nothing
    items = [{
        "name": summary.model.name,
        "description": summary.model.description,
        "created_at": iso(summary.model.created_at),
        "latest_version": summary.latest.version if summary.latest else None,
        "version_count": summary.version_count,
        "latest": version_json(summary.latest, summary.model.name) if summary.latest else None,
    } for summary in model_registry.team_models(team)]
    return JsonResponse({"items": items})


@api_view("GET")
def model_detail(request, name: str):
    model = model_for_user(request.user, request.GET.get("team"), name)
    versions = model_registry.model_versions(model)
    latest = next((v.version for v in versions if v.removed_at is None), None)
    return JsonResponse({
        "name": model.name,
        "description": model.description,
        "created_at": iso(model.created_at),
        "latest_version": latest,
        "versions": [version_json(v, model.name, used_by=v.used_runs) for v in versions],
    })


@api_view("POST")
def model_versions(request, name: str):
    check_name(name, "model")
    version, created = store_archive(request, model_registry.create_version, name)
    version = ModelVersion.objects.select_related("archive", "run", "created_by").get(pk=version.pk)
    response = JsonResponse(version_json(version, name, used_by=[]), status=201 if created else 200)
    response["Location"] = f"/api/v1/models/{name}/versions/{version.version}"
    return response


def _version_for_user(request, name: str, number: int) -> ModelVersion:
    model = model_for_user(request.user, request.GET.get("team"), name)
    version = model.versions.select_related("archive", "run", "created_by").filter(version=number).first()
    if version is None:
        raise ApiError(404, f"model {name} has no version {number}")
    return version


@api_view("GET")
def model_version(request, name: str, version: int):
    found = _version_for_user(request, name, version)
    body = version_json(found, name, used_by=list(found.used_by.order_by("-pk")))
    body["files"] = [{"path": path, "size": size, "sha256": sha256} for path, size, sha256 in found.archive.manifest]
    return JsonResponse(body)


@api_view("GET")
def model_file_raw(request, name: str, version: int):
    found = _version_for_user(request, name, version)
    path = request.GET.get("path", "")
    entry = next((e for e in found.archive.manifest if e[0] == path), None)
    if entry is None:
        raise ApiError(404, "no such file in this version", [{"loc": "path", "msg": f"not a file of model {name} version {version}"}])
    response = stream_response(request, read_member(found.archive, path), "application/octet-stream", filename=posixpath.basename(path))
    response["Content-Length"] = str(entry[1])
    response["X-Content-SHA256"] = entry[2]
    return response
