"""The OpenAPI description of API v1, served at /api/v1/openapi.json and rendered
as the docs page at /api/v1/docs."""

from django.shortcuts import render

from runs.api import api_view
from django.http import JsonResponse

ERROR = {"$ref": "#/components/schemas/Error"}
RUN = {"$ref": "#/components/schemas/Run"}


def _param(name, where="query", schema=None, description="", required=False):
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema or {"type": "string"}}


RUN_ID = _param("id", "path", {"type": "integer"}, "run id", True)


def _op(summary, responses, parameters=(), body=None):
    op = {"summary": summary, "parameters": list(parameters), "responses": responses}
    if body:
        op["requestBody"] = body
    return op


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {str(code): _json(ERROR, text) for code, text in [(400, "bad input"), (401, "not signed in"), (403, "not allowed"), (404, "not found")]}

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": "Runyard API",
        "version": "1",
        "description": "Launch, watch, terminate and reproduce containerized runs. Authenticate with "
        "`Authorization: Bearer <token>` (python manage.py createtoken USER) or a browser session.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/health": {"get": _op("Service health", {"200": _json({"type": "object"})})},
        "/runs": {
            "post": _op(
                "Create a run from its YAML spec",
                {"201": _json(RUN, "created"), **ERRORS, "415": _json(ERROR, "neither YAML nor JSON")},
                [_param("team", description="team name; default: your first team")],
                {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}},
            ),
            "get": _op(
                "List runs, newest first",
                {"200": _json({"type": "object", "properties": {"items": {"type": "array", "items": RUN}, "next_cursor": {"type": ["string", "null"]}}}), **ERRORS},
                [
                    _param("status", schema={"type": "array", "items": {"type": "string"}}, description="repeatable"),
                    _param("tag"), _param("q", description="name contains"), _param("owner", description="username"),
                    _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 200}),
                    _param("cursor", description="next_cursor of the previous page"),
                ],
            ),
        },
        "/runs/{id}": {"get": _op("One run", {"200": _json(RUN), **ERRORS}, [RUN_ID])},
        "/runs/{id}/events": {"get": _op("Status history, oldest first", {"200": _json({"type": "array", "items": {"$ref": "#/components/schemas/Event"}}), **ERRORS}, [RUN_ID])},
        "/runs/{id}/terminate": {"post": _op("Terminate a live run", {"202": _json(RUN, "accepted"), "409": _json(ERROR, "already final"), **ERRORS}, [RUN_ID])},
        "/runs/{id}/reproduce": {"post": _op(
            "Start a new run from a final run's frozen spec (same image digest, git commit, dataset versions); "
            "an optional JSON body changes env, run or resources and is recorded as `changes`",
            {"201": _json(RUN, "created"), "409": _json(ERROR, "not final"), **ERRORS}, [RUN_ID],
            {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {"env": {"type": "object"}, "run": {"type": "array"}, "resources": {"type": "object"}}}}}},
        )},
        "/runs/{id}/logs": {
            "get": _op(
                "Log lines after line `after`",
                {"200": _json({"$ref": "#/components/schemas/LogPage"}), **ERRORS},
                [RUN_ID, _param("after", schema={"type": "integer", "minimum": 0}), _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
        "/runs/{id}/metrics": {"get": _op(
            "The metric keys the run reported (runyard.log, or `#runyard name=value` lines), and how many reports were malformed",
            {"200": _json({"type": "object", "properties": {"keys": {"type": "array", "items": {"type": "string"}}, "reports_malformed": {"type": "integer"}}}), **ERRORS},
            [RUN_ID],
        )},
        "/runs/{id}/metrics/{key}": {"get": _op(
            "One metric's series, thinned to max_points (each bucket keeps its lowest and highest point)",
            {"200": _json({"type": "object", "properties": {
                "x": {"type": "array"}, "y": {"type": "array", "items": {"type": "number"}},
                "total_points": {"type": "integer"}, "downsampled": {"type": "boolean"}}}), **ERRORS},
            [RUN_ID, _param("key", "path", required=True, description="may contain /, e.g. train/loss"),
             _param("max_points", schema={"type": "integer", "minimum": 2, "maximum": 100000, "default": 1000}),
             _param("x", schema={"type": "string", "enum": ["step", "relative", "wall"], "default": "step"},
                    description="step: the reported step (else the point's position); relative: seconds since the start; wall: ISO times"),
             _param("x_min", schema={"type": "number"}, description="only points with x at least this (unix time for x=wall)"),
             _param("x_max", schema={"type": "number"}, description="only points with x at most this")],
        )},
        "/runs/{id}/files": {"get": _op("Exported files under a path, one level deep", {"200": _json({"type": "object"}), **ERRORS}, [RUN_ID, _param("path", description="e.g. /output; default: every export root")])},
        "/runs/{id}/files/raw": {"get": _op("One exported file's bytes", {"200": {"description": "the file", "content": {"application/octet-stream": {}}}, **ERRORS}, [RUN_ID, _param("path", required=True)])},
        "/datasets": {"get": _op("Datasets of your team, with their versions", {"200": _json({"type": "object"}), **ERRORS}, [_param("team")])},
        "/datasets/{name}/versions": {
            "get": _op("A dataset's versions", {"200": _json({"type": "object"}), **ERRORS}, [_param("name", "path", required=True)]),
            "post": _op(
                "Upload a new version (tar, tar.gz or zip); the same content as the newest version answers 200 with it",
                {"201": _json({"$ref": "#/components/schemas/DatasetVersion"}, "created"), "200": _json({"$ref": "#/components/schemas/DatasetVersion"}, "unchanged"), **ERRORS},
                [_param("name", "path", required=True), _param("team")],
                {"required": True, "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ("application/gzip", "application/x-tar", "application/zip")}},
            ),
        },
        "/datasets/{name}/versions/{version}": {"delete": _op("Remove a version: still listed, never mounted again", {"200": _json({"$ref": "#/components/schemas/DatasetVersion"}), **ERRORS}, [_param("name", "path", required=True), _param("version", "path", {"type": "integer"}, required=True)])},
        "/code": {"post": _op(
            "Upload a code snapshot (what `runyard run create --code DIR` sends); import it as code://HASH",
            {"201": _json({"type": "object", "properties": {"hash": {"type": "string"}, "size_bytes": {"type": "integer"}, "file_count": {"type": "integer"}}}), **ERRORS},
            [_param("team")],
            {"required": True, "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
        )},
        "/secrets": {"get": _op("Names of your team's secrets (never their values)", {"200": _json({"type": "object"}), **ERRORS}, [_param("team")])},
        "/secrets/{name}": {
            "put": _op("Set a secret: body {\"value\": \"...\"}; runs read it with env: {VAR: {secret: NAME}}", {"200": _json({"type": "object"}), **ERRORS}, [_param("name", "path", required=True), _param("team")],
                       {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {"value": {"type": "string"}}}}}}),
            "delete": _op("Delete a secret", {"200": _json({"type": "object"}), **ERRORS}, [_param("name", "path", required=True), _param("team")]),
        },
        "/runs/{id}/logs/search": {"get": _op(
            "Lines containing q (case-insensitive) after line `after`, over the whole stored log; page on with next until done",
            {"200": _json({"type": "object", "properties": {"hits": {"type": "array"}, "next": {"type": "integer"}, "done": {"type": "boolean"}}}), **ERRORS},
            [RUN_ID, _param("q", required=True), _param("after", schema={"type": "integer"}), _param("limit", schema={"type": "integer", "maximum": 1000})],
        )},
        "/runs/{id}/logs.txt": {"get": _op("The whole log as text", {"200": {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}, **ERRORS}, [RUN_ID])},
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}}}},
                },
            },
            "DatasetVersion": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "integer"}, "content_hash": {"type": "string"},
                "size_bytes": {"type": "integer"}, "file_count": {"type": "integer"}, "created_at": {"type": "string"}, "removed": {"type": "boolean"},
            }},
            "Event": {"type": "object", "properties": {k: {"type": "string"} for k in ("from", "to", "at", "actor", "reason")}},
            "LogPage": {
                "type": "object",
                "properties": {
                    "lines": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}, "t": {"type": "string"}, "stream": {"type": "string", "enum": ["stdout", "stderr"]}, "text": {"type": "string"}}}},
                    "next": {"type": "integer"},
                    "complete": {"type": "boolean"},
                },
            },
            "Run": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "status": {"type": "string", "enum": ["pending", "initializing", "running", "stopping", "completed", "failed", "idle", "terminated"]},
                    "status_reason": {"type": "string"}, "exit_code": {"type": ["integer", "null"]},
                    "owner": {"type": "string"}, "team": {"type": "string"},
                    "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                    "duration_seconds": {"type": ["number", "null"]}, "progress": {"type": ["number", "null"]},
                    "eta_seconds": {"type": ["number", "null"]}, "reports_malformed": {"type": "integer"}, "credits": {"type": "string"},
                    "spec": {"type": "object"}, "reproduced_from": {"type": ["integer", "null"]}, "executor": {"type": "string"},
                    "imports": {"type": "array", "items": {"type": "object"}}, "changes": {"type": "object"},
                    "exports_state": {"type": ["string", "null"], "enum": ["complete", "partial", "failed", None]},
                },
            },
        },
    },
}


@api_view("GET", public=True)
def openapi_json(request):
    return JsonResponse(SPEC)


def docs(request):
    operations = [
        {"method": method.upper(), "path": "/api/v1" + path, **op}
        for path, methods in SPEC["paths"].items()
        for method, op in methods.items()
    ]
    return render(request, "api_docs.html", {"info": SPEC["info"], "operations": operations})
