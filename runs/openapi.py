"""The OpenAPI description of API v1, served at /api/v1/openapi.json and rendered
as the docs page at /api/v1/docs.

The run object is described by RUN_FIELDS, the one list of the fields
`runs.api.serialize_run` writes: tests/test_api_schema.py checks that the two name
the same fields and that what serialize_run writes matches these types, and runs
schemathesis over the whole API against this document, so neither can drift.
"""

from django.http import JsonResponse
from django.shortcuts import render

from runs.api import api_view
from runs.models import Status

# ------------------------------------------------------------------ JSON shapes


def nullable(schema: dict) -> dict:
    kind = schema["type"]
    return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}


def obj(properties: dict, *, optional: tuple[str, ...] = (), closed: bool = False, description: str = "") -> dict:
    """An object whose properties are all present except those in `optional`."""
    schema = {"type": "object", "properties": properties, "required": [k for k in properties if k not in optional]}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def items_of(schema: dict) -> dict:
    return obj({"items": {"type": "array", "items": schema}})


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
MAYBE_TIME = nullable(TIME)
LIVE_STATUSES = [s for s in Status.values if s in ("pending", "initializing", "running", "stopping", "idle")]

# Every field of a run as the API writes it (runs.api.serialize_run), in its order.
RUN_FIELDS: dict[str, dict] = {
    "id": INTEGER,
    "name": STRING,
    "description": STRING,
    "tags": {"type": "array", "items": STRING},
    "status": {"type": "string", "enum": list(Status.values)},
    "status_reason": {**STRING, "description": "why it is in this status, in words"},
    "exit_code": nullable(INTEGER),
    "owner": {**STRING, "description": "username"},
    "team": STRING,
    "created_at": TIME,
    "initializing_at": MAYBE_TIME,
    "started_at": MAYBE_TIME,
    "stopping_at": MAYBE_TIME,
    "idle_at": MAYBE_TIME,
    "finished_at": MAYBE_TIME,
    "stop_deadline": {**MAYBE_TIME, "description": "while stopping: when SIGKILL follows SIGTERM"},
    "duration_seconds": nullable(NUMBER),
    "progress": {**nullable(NUMBER), "description": "the last fraction the run reported (runyard.progress)"},
    "eta_seconds": {**nullable(NUMBER), "description": "seconds left at the recent rate; null until it can be told, and while stalled"},
    "stalled": {**BOOLEAN, "description": "running, and its progress has not moved for RUNYARD_STALLED_SECONDS"},
    "reports_malformed": COUNT,
    "summary": {"type": "object", "description": "runyard.summary: the latest value per name (a number or text)",
                "additionalProperties": {"type": ["number", "string"]}},
    "credits": {**STRING, "description": "a decimal number, as a string"},
    "credits_by_status": obj({status: STRING for status in ("initializing", "running", "idle")}, closed=True,
                             description="credits charged in each status (decimal strings); credits is their sum"),
    "preset": STRING,
    "image": STRING,
    "image_digest": {**nullable(STRING), "description": "pinned when the run started"},
    "spec": {"type": "object", "description": "the validated spec, frozen at creation"},
    "reproduced_from": nullable(INTEGER),
    "executor": {"type": "string", "enum": ["docker", "local", "swarm"]},
    "cluster": {**STRING, "description": "the cluster it runs on (resources.cluster)"},
    "node": {**nullable(STRING), "description": "on a Swarm, once placed: the node's name label, else its hostname"},
    "log_lines": COUNT,
    "imports": {"type": "array", "items": ref("Import")},
    "changes": {"type": "object", "description": "a reproduction's changes: {field: {from, to}}",
                "additionalProperties": obj({"from": {}, "to": {}})},
    "warnings": {"type": "array", "items": obj({"loc": STRING, "msg": STRING}),
                 "description": "what was said about its file at creation without refusing it, e.g. a VESSL organization that is not the team"},
    "exports_state": {"type": ["string", "null"], "enum": ["complete", "partial", "failed", None]},
    "queue_position": {**nullable(INTEGER), "minimum": 1, "description": "1-based place in the team's queue while pending"},
    "url": {**STRING, "description": "the run's page"},
}

SCHEMAS = {
    "Error": obj({
        "detail": STRING,
        "errors": {"type": "array", "items": obj({"loc": STRING, "msg": STRING})},
    }, description="Every error: what went wrong, and each problem with where it is"),
    "Run": obj(RUN_FIELDS, closed=True),
    "RunPage": obj({"items": {"type": "array", "items": ref("Run")}, "next_cursor": nullable(STRING)}),
    "Import": obj({
        "path": STRING, "kind": {"type": "string", "enum": ["git", "dataset", "code", "model", "run_files", "hf"]},
        "url": STRING, "ref": STRING, "commit": STRING, "credential": {**STRING, "description": "git: the team credential it logs in with"},
        "name": STRING, "version": INTEGER, "content_hash": STRING, "size_bytes": COUNT, "file_count": COUNT,
        "run": INTEGER, "run_path": STRING, "partial": BOOLEAN, "volume": STRING,
    }, optional=("url", "ref", "commit", "credential", "name", "version", "content_hash", "size_bytes", "file_count",
                 "run", "run_path", "partial", "volume"),
        description="git: url, ref, commit, credential; hf: url, ref, commit; dataset, model: name, version, content_hash; code: content_hash; "
                    "run_files: run, run_path, content_hash, partial (and volume, for a volume:// import)"),
    "Problem": obj({"loc": STRING, "msg": STRING,
                    "line": {**nullable(INTEGER), "description": "the line of the YAML it is on; null for JSON, or where unknown"}}),
    "DryRun": obj({
        "valid": {**BOOLEAN, "description": "true: creating the run now would succeed"},
        "spec": {"type": ["object", "null"], "description": "valid: the spec as it would be frozen (git commit, dataset"
                 " version pinned); otherwise the file as read, or null if it could not be read"},
        "errors": {"type": "array", "items": ref("Problem"), "description": "why it would be refused, each by field"},
        "warnings": {"type": "array", "items": ref("Problem"), "description": "notes about what is accepted but changes nothing here"},
    }, description="POST /runs?dry_run=true: what creating the run would do, without doing it"),
    "Event": obj({
        "from": nullable(STRING), "to": STRING, "at": TIME, "actor": STRING, "reason": STRING,
    }),
    "LogLine": obj({"n": COUNT, "t": TIME,
                    "stream": {"type": "string", "enum": ["stdout", "stderr"]}, "text": STRING}),
    "LogPage": obj({"lines": {"type": "array", "items": ref("LogLine")}, "next": COUNT, "complete": BOOLEAN}),
    "LogSearch": obj({"hits": {"type": "array", "items": ref("LogLine")}, "next": COUNT, "done": BOOLEAN}),
    "MetricKeys": obj({"keys": {"type": "array", "items": STRING}, "reports_malformed": COUNT}),
    "MetricSeries": obj({
        "key": STRING, "x_axis": {"type": "string", "enum": ["step", "relative", "wall"]},
        "x": {"type": "array", "items": {"type": ["number", "string"]}, "description": "numbers, or ISO times for x=wall"},
        "y": {"type": "array", "items": NUMBER},
        "total_points": COUNT, "downsampled": BOOLEAN,
    }),
    "FileEntry": obj({
        "path": STRING, "size": COUNT, "is_dir": BOOLEAN,
        "files": {**COUNT, "description": "folders: files under it"},
        "sha256": {**STRING, "description": "files"}, "partial": {**BOOLEAN, "description": "files: copied from a run stopped mid-way"},
    }, optional=("files", "sha256", "partial")),
    "FileListing": obj({
        "path": STRING, "exports_state": RUN_FIELDS["exports_state"],
        "entries": {"type": "array", "items": ref("FileEntry")},
    }),
    "DatasetVersion": obj({
        "name": STRING, "version": {"type": "integer", "minimum": 1}, "content_hash": STRING,
        "size_bytes": COUNT, "file_count": COUNT, "created_at": TIME, "removed": BOOLEAN,
        "made_by_run": {**nullable(INTEGER), "description": "the run whose export made it; null: uploaded"},
    }),
    "Dataset": obj({"name": STRING, "latest_version": nullable(INTEGER),
                    "versions": {"type": "array", "items": ref("DatasetVersion")}}),
    "DatasetList": items_of(ref("Dataset")),
    "DatasetVersions": obj({"name": STRING, "versions": {"type": "array", "items": ref("DatasetVersion")}}),
    "RunRef": obj({"id": INTEGER, "name": STRING, "status": {"type": "string", "enum": list(Status.values)},
                   "url": {**STRING, "description": "the run's page"}}),
    "ModelVersion": obj({
        "name": STRING, "version": {"type": "integer", "minimum": 1},
        "content_hash": {**STRING, "description": "sha256 of its manifest: the same files, the same hash"},
        "size_bytes": COUNT, "file_count": COUNT, "created_at": TIME,
        "created_by": {**nullable(STRING), "description": "who uploaded it, or launched the run that made it"},
        "made_by_run": {"anyOf": [ref("RunRef"), {"type": "null"}], "description": "the run whose export made it; null: uploaded"},
        "removed": BOOLEAN,
        "used_by_runs": {"type": "array", "items": ref("RunRef"), "description": "the runs that imported it, newest first"},
    }, optional=("used_by_runs",)),
    "ModelVersionFiles": {"allOf": [ref("ModelVersion"), obj({
        "files": {"type": "array", "items": obj({"path": STRING, "size": COUNT, "sha256": STRING})}})]},
    "ModelSummary": obj({
        "name": STRING, "description": STRING, "created_at": TIME,
        "latest_version": nullable(INTEGER), "version_count": COUNT,
        "latest": {"anyOf": [ref("ModelVersion"), {"type": "null"}], "description": "its newest version not removed"},
    }),
    "ModelList": items_of(ref("ModelSummary")),
    "Model": obj({
        "name": STRING, "description": STRING, "created_at": TIME, "latest_version": nullable(INTEGER),
        "versions": {"type": "array", "items": ref("ModelVersion"), "description": "newest first, with their lineage"},
    }),
    "CodeSnapshot": obj({"hash": STRING, "size_bytes": COUNT, "file_count": COUNT}),
    "Secret": obj({"name": STRING, "updated_at": TIME, "updated_by": nullable(STRING)},
                  description="A secret's name and history; its value is never sent"),
    "SecretList": items_of(ref("Secret")),
    "SecretSet": obj({"name": STRING, "updated_at": TIME}),
    "SecretDeleted": obj({"name": STRING, "deleted": {"type": "boolean", "const": True}}),
    "Credential": obj({
        "name": STRING, "kind": {"type": "string", "enum": ["registry", "git-token", "git-ssh"]},
        "host": {**STRING, "description": "the registry or git server it is for, and the only one it is sent to"},
        "username": nullable(STRING),
        "known_hosts": {**nullable(BOOLEAN), "description": "git-ssh: whether the server's known_hosts were given"},
        "created_at": TIME, "updated_at": TIME, "updated_by": nullable(STRING),
    }, closed=True, description="A credential's name, kind, host and username; its password, token or key is never sent"),
    "CredentialList": items_of(ref("Credential")),
    "CredentialDeleted": obj({"name": STRING, "deleted": {"type": "boolean", "const": True}}),
    "Token": obj({
        "id": INTEGER, "name": STRING, "prefix": {**STRING, "description": "the token's first characters, to recognize it"},
        "created_at": TIME, "expires_at": MAYBE_TIME, "last_used_at": MAYBE_TIME,
    }),
    "TokenCreated": {"allOf": [ref("Token"), obj({"token": {**STRING, "description": "shown this once; send as Bearer"}})]},
    "TokenList": items_of(ref("Token")),
    "TeamSummary": obj({"name": STRING, "role": nullable({"type": "string", "enum": ["admin", "member", "viewer"]}),
                        "max_running": nullable(COUNT)}),
    "TeamList": items_of(ref("TeamSummary")),
    "Team": obj({
        "name": STRING, "role": nullable({"type": "string", "enum": ["admin", "member", "viewer"]}),
        "max_running": {**nullable(COUNT), "description": "at most this many runs of the team at once; null: no cap"},
        "credit_limit": {**nullable(STRING), "description": "a decimal string: no new run once the team has used this many credits; null: no limit"},
        "idle_limit_seconds": {**nullable(COUNT), "description": "an idle run is terminated (idle timeout) after this long; null: never"},
        "usage": obj({
            **{s: {**COUNT, "description": f"{s} runs now"} for s in LIVE_STATUSES},
            "credits": {**STRING, "description": "every credit the team's runs have used (decimal string)"},
            "credits_by_status": obj({s: STRING for s in ("initializing", "running", "idle")}),
        }, description="the team's live runs by status, and the credits it has used"),
    }),
    "Health": obj({"status": {"type": "string", "enum": ["ok", "error"]}, "executor": STRING,
                   "database": STRING, "broker": STRING}),
}

# ------------------------------------------------------------------ operations


def param(name, where="query", schema=None, description="", required=False):
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema or STRING}


RUN_ID = param("id", "path", INTEGER, "run id")
TEAM = param("team", description="team name; default: your first team")
NAME = param("name", "path", description="letters, digits, . _ -")


def json_body(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_TEXT = {400: "bad input", 401: "not signed in, or an unknown token", 403: "not allowed", 404: "not found",
              405: "method not allowed", 409: "conflict with the run's status", 413: "too large",
              415: "unsupported content type", 429: "too many failed attempts: wait"}
ERRORS = [400, 401, 403, 404, 405, 429]


def op(summary: str, ok: dict, parameters=(), body=None, errors=(), description: str = "") -> dict:
    """An operation: its 2xx answers, the errors every endpoint can give, and `errors`."""
    responses = {str(code): response for code, response in ok.items()}
    for code in sorted({*ERRORS, *errors}):
        responses[str(code)] = json_body(ref("Error"), ERROR_TEXT[code])
    operation = {"summary": summary, "parameters": list(parameters), "responses": responses}
    if description:
        operation["description"] = description
    if body:
        operation["requestBody"] = body
    return operation


def json_request(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


ARCHIVE = {"schema": {"type": "string", "format": "binary"}}
EXAMPLE_SPEC = "name: hello\nimage: runyard/busybox:latest\nrun:\n  - command: echo hello\n"
RUN_SPEC_BODY = {"required": True, "content": {
    "application/yaml": {"schema": STRING, "example": EXAMPLE_SPEC},
    "application/json": {"schema": {"type": "object"},
                         "example": {"name": "hello", "image": "runyard/busybox:latest", "run": [{"command": "echo hello"}]}},
}}
OVERRIDES = obj({
    "env": {"type": "object", "additionalProperties": STRING},
    "run": {"type": "array", "items": {"type": "object"}},
    "resources": {"type": "object"},
}, optional=("env", "run", "resources"))

PATHS = {
    "/health": {"get": op("Service health", {200: json_body(ref("Health")), 503: json_body(ref("Health"), "the database is unreachable")})},
    "/runs": {
        "post": op("Create a run from its YAML spec", {
            201: json_body(ref("Run"), "created"),
            200: json_body(ref("DryRun"), "dry_run=true: validated and resolved, nothing created (also when not valid)"),
        }, [TEAM, param("dry_run", schema={"type": "boolean", "default": False},
                        description="true: check and resolve the file exactly as creating would, and create nothing")],
            RUN_SPEC_BODY, errors=(413, 415),
            description="With dry_run=true the answer is 200 {valid, spec, errors, warnings} whether or not the file is"
                        " valid: the same checks as creating (git ref to commit, dataset version, preset, cluster, secrets,"
                        " credit limit), and nothing is written."),
        "get": op("List runs, newest first", {200: json_body(ref("RunPage"))}, [
            param("status", schema={"type": "array", "items": {"type": "string", "enum": list(Status.values)}}, description="repeatable"),
            param("tag"), param("q", description="name contains"), param("owner", description="username"),
            param("limit", schema={"type": "integer", "minimum": 1, "maximum": 200}),
            param("cursor", description="next_cursor of the previous page"),
        ]),
    },
    "/runs/{id}": {"get": op("One run", {200: json_body(ref("Run"))}, [RUN_ID])},
    "/runs/{id}/events": {"get": op("Status history, oldest first", {200: json_body({"type": "array", "items": ref("Event")})}, [RUN_ID])},
    "/runs/{id}/terminate": {"post": op("Terminate a live run", {202: json_body(ref("Run"), "accepted")}, [RUN_ID], errors=(409,))},
    "/runs/{id}/reproduce": {"post": op(
        "Start a new run from a final run's frozen spec (same image digest, git commit, dataset versions); "
        "an optional JSON body changes env, run or resources and is recorded as `changes`",
        {201: json_body(ref("Run"), "created")}, [RUN_ID], json_request(OVERRIDES, required=False), errors=(409, 413, 415),
    )},
    "/runs/{id}/logs": {"get": op("Log lines after line `after`", {200: json_body(ref("LogPage"))}, [
        RUN_ID, param("after", schema={"type": "integer", "minimum": 0}),
        param("limit", schema={"type": "integer", "minimum": 1, "maximum": 10000})])},
    "/runs/{id}/logs/search": {"get": op(
        "Lines containing q (case-insensitive) after line `after`, over the whole stored log; page on with next until done",
        {200: json_body(ref("LogSearch"))},
        [RUN_ID, param("q", required=True, schema={"type": "string", "minLength": 1}),
         param("after", schema={"type": "integer", "minimum": 0}),
         param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})],
    )},
    "/runs/{id}/logs.txt": {"get": op("The whole log as text", {
        200: {"description": "text", "content": {"text/plain": {"schema": STRING}}}}, [RUN_ID])},
    "/runs/{id}/metrics": {"get": op(
        "The metric keys the run reported (runyard.log, or `#runyard name=value` lines), and how many reports were malformed",
        {200: json_body(ref("MetricKeys"))}, [RUN_ID])},
    "/runs/{id}/metrics/{key}": {"get": op(
        "One metric's series, thinned to max_points (each bucket keeps its lowest and highest point)",
        {200: json_body(ref("MetricSeries"))},
        [RUN_ID, param("key", "path", description="may contain /, e.g. train/loss"),
         param("max_points", schema={"type": "integer", "minimum": 2, "maximum": 100000, "default": 1000}),
         param("x", schema={"type": "string", "enum": ["step", "relative", "wall"], "default": "step"},
               description="step: the reported step (else the point's position; the system metrics sys/... have no step and answer"
                           " relative, as x_axis says); relative: seconds since the start; wall: ISO times"),
         param("x_min", schema=NUMBER, description="only points with x at least this (unix time for x=wall)"),
         param("x_max", schema=NUMBER, description="only points with x at most this")],
    )},
    "/runs/{id}/files": {"get": op("Exported files under a path, one level deep", {200: json_body(ref("FileListing"))},
                                   [RUN_ID, param("path", description="e.g. /output; default: every export root")])},
    "/runs/{id}/files/raw": {"get": op("One exported file's bytes", {
        200: {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
        [RUN_ID, param("path", required=True)])},
    "/datasets": {"get": op("Datasets of your team, with their versions", {200: json_body(ref("DatasetList"))}, [TEAM])},
    "/datasets/{name}/versions": {
        "get": op("A dataset's versions", {200: json_body(ref("DatasetVersions"))}, [NAME, TEAM]),
        "post": op(
            "Upload a new version (tar, tar.gz or zip); the same content as the newest version answers 200 with it",
            {201: json_body(ref("DatasetVersion"), "created"), 200: json_body(ref("DatasetVersion"), "unchanged")},
            [NAME, TEAM],
            {"required": True, "content": {t: ARCHIVE for t in ("application/gzip", "application/x-tar", "application/zip")}},
            errors=(413, 415),
        ),
    },
    "/datasets/{name}/versions/{version}": {"delete": op(
        "Remove a version: still listed, never mounted again", {200: json_body(ref("DatasetVersion"))},
        [NAME, param("version", "path", INTEGER), TEAM])},
    "/models": {"get": op("Models of your team, each with its newest version", {200: json_body(ref("ModelList"))}, [TEAM])},
    "/models/{name}": {"get": op(
        "A model's versions, newest first, each with the run that made it and the runs that imported it",
        {200: json_body(ref("Model"))}, [NAME, TEAM])},
    "/models/{name}/versions": {"post": op(
        "Upload a new version (tar, tar.gz or zip); the model is created with its first version. "
        "The same content as the newest version answers 200 with it. A run makes one with `export: {/out/: vessl-model://ORG/NAME}`",
        {201: json_body(ref("ModelVersion"), "created"), 200: json_body(ref("ModelVersion"), "unchanged")},
        [NAME, TEAM],
        {"required": True, "content": {t: ARCHIVE for t in ("application/gzip", "application/x-tar", "application/zip")}},
        errors=(413, 415),
    )},
    "/models/{name}/versions/{version}": {"get": op(
        "One version with its lineage and its files (path, size, sha256)", {200: json_body(ref("ModelVersionFiles"))},
        [NAME, param("version", "path", INTEGER), TEAM])},
    "/models/{name}/versions/{version}/files/raw": {"get": op("One file's bytes", {
        200: {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
        [NAME, param("version", "path", INTEGER), param("path", required=True, description="as in files[].path"), TEAM])},
    "/code": {"post": op(
        "Upload a code snapshot (what `runyard run create --code DIR` sends); import it as code://HASH",
        {201: json_body(ref("CodeSnapshot"), "created"), 200: json_body(ref("CodeSnapshot"), "already stored")}, [TEAM],
        {"required": True, "content": {"application/gzip": ARCHIVE}}, errors=(413, 415),
    )},
    "/secrets": {"get": op("Names of your team's secrets (never their values)", {200: json_body(ref("SecretList"))}, [TEAM])},
    "/secrets/{name}": {
        "put": op("Set a secret; runs read it with env: {VAR: {secret: NAME}}", {200: json_body(ref("SecretSet"))}, [NAME, TEAM],
                  json_request(obj({"value": STRING})), errors=(413, 415)),
        "delete": op("Delete a secret", {200: json_body(ref("SecretDeleted"))}, [NAME, TEAM]),
    },
    "/credentials": {"get": op("Your team's registry and git credentials (never their secrets)",
                               {200: json_body(ref("CredentialList"))}, [TEAM])},
    "/credentials/{name}": {
        "get": op("One credential (never its secret)", {200: json_body(ref("Credential"))}, [NAME, TEAM]),
        "put": op(
            "Create or replace a credential; runs use it with image: {url, credential_name} or credential_name on a git import",
            {201: json_body(ref("Credential"), "created"), 200: json_body(ref("Credential"), "replaced")}, [NAME, TEAM],
            json_request({"oneOf": [
                obj({"kind": {"const": "registry"}, "host": STRING, "username": STRING, "password": STRING}, closed=True),
                obj({"kind": {"const": "git-token"}, "host": STRING, "username": STRING, "token": STRING},
                    optional=("username",), closed=True),
                obj({"kind": {"const": "git-ssh"}, "host": STRING, "username": STRING, "private_key": STRING, "known_hosts": STRING},
                    optional=("username", "known_hosts"), closed=True),
            ]}), errors=(413, 415)),
        "delete": op("Delete a credential", {200: json_body(ref("CredentialDeleted"))}, [NAME, TEAM]),
    },
    "/tokens": {
        "get": op("Your API tokens (never their secret)", {200: json_body(ref("TokenList"))}),
        "post": op("A new token for you; its secret is in this answer only", {201: json_body(ref("TokenCreated"), "created")}, [],
                   json_request(obj({"name": {"type": "string", "maxLength": 100},
                                     "expires_in_days": {**nullable(INTEGER), "minimum": 1, "maximum": 3650}},
                                    optional=("name", "expires_in_days")),
                                required=False), errors=(413, 415)),
    },
    "/tokens/{id}": {"delete": op("Revoke one of your tokens", {204: {"description": "revoked"}},
                                  [param("id", "path", INTEGER, "token id")])},
    "/teams": {"get": op("Your teams and your role in each", {200: json_body(ref("TeamList"))})},
    "/teams/{name}": {
        "get": op("A team's settings and its live runs", {200: json_body(ref("Team"))}, [param("name", "path")]),
        "patch": op("Change a team's settings (its admins)", {200: json_body(ref("Team"))}, [param("name", "path")],
                    json_request(obj({
                        "max_running": {**nullable(COUNT), "description": "null: no cap"},
                        "credit_limit": {**nullable(STRING), "description": "a decimal string, e.g. \"500\"; null: no limit"},
                        "idle_limit_seconds": {**nullable(COUNT), "description": "null: idle runs are never ended"},
                    }, optional=("max_running", "credit_limit", "idle_limit_seconds"))),
                    errors=(413, 415)),
    },
}

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": "Runyard API",
        "version": "1",
        "description": "Launch, watch, terminate and reproduce containerized runs. Authenticate with "
        "`Authorization: Bearer <token>` (python manage.py createtoken USER) or a browser session. "
        "Every error answers {\"detail\": ..., \"errors\": [{\"loc\", \"msg\"}]}.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}, {"session": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
        },
        "schemas": SCHEMAS,
    },
}
# The health check and this document need no credentials.
PATHS["/health"]["get"]["security"] = []


@api_view("GET", public=True)
def openapi_json(request):
    return JsonResponse(SPEC)


def docs(request):
    operations = [
        {"method": method.upper(), "path": "/api/v1" + path, **operation}
        for path, methods in SPEC["paths"].items()
        for method, operation in methods.items()
    ]
    return render(request, "api_docs.html", {"info": SPEC["info"], "operations": operations})
