"""API v1 for what runs read: datasets, code snapshots, team secrets and credentials."""

import re

from django.http import JsonResponse

from runs.access import Action, credential_for_user, dataset_for_user, secret_for_user
from runs.api import ApiError, api_view, iso, json_body, team_param
from runs.archives import ArchiveError
from runs.credentials import CredentialError, describe, set_credential
from runs.datasets import create_code_snapshot, create_version, remove_version
from runs.file_sets import NAME_PATTERN, NAME_RULE
from runs.models import Credential, DatasetVersion, TeamSecret
from runs.team_secrets import SecretError, set_secret

ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip", "application/octet-stream")


def _writer_team(request):
    """?team= or the user's first team where they may change things (runs.access)."""
    return team_param(request, Action.CHANGE)


def _archive_body(request):
    if request.content_type not in ARCHIVE_TYPES:
        raise ApiError(415, f"send an archive ({', '.join(ARCHIVE_TYPES[:3])}), not {request.content_type or 'nothing'}")
    return request


def store_archive(request, store, *names) -> tuple:
    """What `store` (runs.datasets.create_version, create_code_snapshot,
    runs.model_registry.create_version) makes of the archive in the body, in the
    user's team where they may change things: (the object, created)."""
    team = _writer_team(request)
    try:
        return store(team, *names, _archive_body(request), request.content_type, request.user)
    except ArchiveError as exc:
        raise ApiError(400, f"the upload is not a usable archive: {exc}", [{"loc": "body", "msg": str(exc)}]) from None


def check_name(name: str, what: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ApiError(400, f"invalid {what} name", [{"loc": "name", "msg": NAME_RULE}])


def _version_json(version: DatasetVersion) -> dict:
    archive = version.archive
    return {
        "name": version.dataset.name,
        "version": version.version,
        "content_hash": archive.content_hash,
        "size_bytes": archive.size_bytes,
        "file_count": archive.file_count,
        "created_at": iso(version.created_at),
        "removed": version.removed_at is not None,
        "made_by_run": version.run_id,
    }


@api_view("GET")
def datasets(request):
    team = team_param(request)  # None: the user is in no team, and sees nothing
    versions = DatasetVersion.objects.filter(dataset__team=team).select_related("dataset", "archive").order_by("dataset__name", "version")
    items: dict[str, dict] = {}
    for version in versions:
        item = items.setdefault(version.dataset.name, {"name": version.dataset.name, "latest_version": None, "versions": []})
        item["versions"].append(_version_json(version))
        if version.removed_at is None:
            item["latest_version"] = version.version
    return JsonResponse({"items": list(items.values())})


@api_view("GET", "POST")
def dataset_versions(request, name: str):
    check_name(name, "dataset")
    if request.method == "GET":
        dataset = dataset_for_user(request.user, request.GET.get("team"), name)
        versions = dataset.versions.select_related("dataset", "archive").order_by("version")
        return JsonResponse({"name": name, "versions": [_version_json(v) for v in versions]})
    version, created = store_archive(request, create_version, name)
    return JsonResponse(_version_json(version), status=201 if created else 200)


@api_view("DELETE")
def dataset_version(request, name: str, version: int):
    team = _writer_team(request)
    found = DatasetVersion.objects.select_related("dataset", "archive").filter(dataset__team=team, dataset__name=name, version=version).first()
    if found is None:
        raise ApiError(404, f"dataset {name}@{version} not found")
    remove_version(found)
    found.refresh_from_db()
    return JsonResponse(_version_json(found))


@api_view("POST")
def code_snapshots(request):
    snapshot, created = store_archive(request, create_code_snapshot)
    archive = snapshot.archive
    body = {"hash": archive.content_hash, "size_bytes": archive.size_bytes, "file_count": archive.file_count}
    return JsonResponse(body, status=201 if created else 200)


@api_view("GET")
def secrets(request):
    team = team_param(request)  # None: the user is in no team, and sees nothing
    rows = TeamSecret.objects.filter(team=team).select_related("updated_by").order_by("name")
    return JsonResponse({"items": [
        {"name": s.name, "updated_at": iso(s.updated_at), "updated_by": s.updated_by.get_username() if s.updated_by else None}
        for s in rows
    ]})


@api_view("PUT", "DELETE")
def secret(request, name: str):
    if request.method == "DELETE":
        secret_for_user(request.user, request.GET.get("team"), name, Action.CHANGE).delete()
        return JsonResponse({"name": name, "deleted": True})
    team = _writer_team(request)
    body = json_body(request)
    if not isinstance(body, dict) or "value" not in body:
        raise ApiError(400, 'send {"value": "..."} as JSON', [{"loc": "value", "msg": "required"}])
    value = body["value"]
    try:
        stored = set_secret(team, name, value, request.user)
    except SecretError as exc:
        raise ApiError(400, str(exc), [{"loc": "value" if "value" in str(exc) else "name", "msg": str(exc)}]) from None
    # The value is never sent back.
    return JsonResponse({"name": stored.name, "updated_at": iso(stored.updated_at)})


# What each kind of credential is given: (its secret's field, the other fields it takes).
CREDENTIAL_FIELDS = {
    Credential.Kind.REGISTRY: ("password", ("host", "username")),
    Credential.Kind.GIT_TOKEN: ("token", ("host", "username")),
    Credential.Kind.GIT_SSH: ("private_key", ("host", "username", "known_hosts")),
}


def _credential_json(credential: Credential) -> dict:
    shown = describe(credential)
    return {**shown, "created_at": iso(shown["created_at"]), "updated_at": iso(shown["updated_at"])}


@api_view("GET")
def credentials(request):
    team = team_param(request)  # None: the user is in no team, and sees nothing
    rows = Credential.objects.filter(team=team).select_related("updated_by").order_by("name")
    return JsonResponse({"items": [_credential_json(c) for c in rows]})


@api_view("GET", "PUT", "DELETE")
def credential(request, name: str):
    """One credential: GET shows it (never its secret), PUT creates or replaces it, DELETE removes it."""
    if request.method == "GET":
        return JsonResponse(_credential_json(credential_for_user(request.user, request.GET.get("team"), name)))
    if request.method == "DELETE":
        credential_for_user(request.user, request.GET.get("team"), name, Action.CHANGE).delete()
        return JsonResponse({"name": name, "deleted": True})
    team = _writer_team(request)
    body = json_body(request)
    kinds = ", ".join(CREDENTIAL_FIELDS)
    if not isinstance(body, dict):
        raise ApiError(400, 'send the credential as a JSON object: {"kind": ..., "host": ..., ...}', [{"loc": "kind", "msg": "required"}])
    kind = body.get("kind")
    if kind not in CREDENTIAL_FIELDS:
        raise ApiError(400, f"kind must be one of {kinds}", [{"loc": "kind", "msg": f"expected one of {kinds}"}])
    secret_field, others = CREDENTIAL_FIELDS[kind]
    allowed = {"kind", secret_field, *others}
    unknown = sorted(str(key) for key in body if key not in allowed)
    missing = [field for field in ("host", secret_field) if body.get(field) in (None, "")]
    if unknown or missing:
        errors = [{"loc": key, "msg": f"not a field of a {kind} credential (it takes {', '.join(sorted(allowed))})"} for key in unknown]
        errors += [{"loc": field, "msg": "required"} for field in missing]
        raise ApiError(400, f"a {kind} credential takes {', '.join(sorted(allowed))}", errors)
    try:
        stored, created = set_credential(
            team, name, kind=kind, host=body["host"], username=body.get("username") or "", secret=body[secret_field],
            known_hosts=body.get("known_hosts") or "", user=request.user,
        )
    except CredentialError as exc:
        raise ApiError(400, str(exc), [{"loc": exc.field, "msg": str(exc)}]) from None
    # The secret is never sent back.
    return JsonResponse(_credential_json(stored), status=201 if created else 200)
