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
        "/runs/{id}/reproduce": {"post": _op("Start a new run from a final run's frozen spec", {"201": _json(RUN, "created"), "409": _json(ERROR, "not final"), **ERRORS}, [RUN_ID])},
        "/runs/{id}/logs": {
            "get": _op(
                "Log lines after line `after`",
                {"200": _json({"$ref": "#/components/schemas/LogPage"}), **ERRORS},
                [RUN_ID, _param("after", schema={"type": "integer", "minimum": 0}), _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
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
                    "eta_seconds": {"type": ["number", "null"]}, "credits": {"type": "string"},
                    "spec": {"type": "object"}, "reproduced_from": {"type": ["integer", "null"]}, "executor": {"type": "string"},
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
