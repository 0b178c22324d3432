"""The API matches its OpenAPI document (runs/openapi.py).

The run object's schema is the declaration serialize_run is checked against here;
schemathesis then sends generated requests to every operation of a live console
(Daphne, a Celery worker, the Docker engine), as a team member with a bearer token,
and fails on any 5xx or any answer the document does not describe.
"""

import io
import os
import tarfile
import zlib

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance,
)

from runs.api import serialize_run
from runs.models import ApiToken, Run
from runs.openapi import RUN_FIELDS, SCHEMAS, SPEC
from runs.services import create_run
from tests.conftest import BUSYBOX, wait_for

# Bounded so the whole suite keeps to its time on two cores (about 40 operations);
# RUNYARD_SCHEMA_EXAMPLES=100 for a deeper search by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("RUNYARD_SCHEMA_EXAMPLES", "6"))


def run_validator():
    return jsonschema_rs.validator_for({**SCHEMAS["Run"], "components": {"schemas": SCHEMAS}})


def test_the_run_schema_names_exactly_the_fields_serialize_run_writes(alice):
    run = create_run(user=alice, source=f"name: fields\nimage: {BUSYBOX}\nrun:\n  - command: echo hi\n", executor="docker")
    run = Run.objects.select_related("owner", "team", "preset").get(pk=run.pk)
    written = serialize_run(run)
    assert list(written) == list(RUN_FIELDS)
    assert SCHEMAS["Run"]["required"] == list(RUN_FIELDS)
    errors = [error.message for error in run_validator().iter_errors(written)]
    assert errors == []


def test_a_field_missing_from_either_side_is_caught(alice):
    run = create_run(user=alice, source=f"name: fields\nimage: {BUSYBOX}\nrun:\n  - command: echo hi\n", executor="docker")
    written = serialize_run(Run.objects.get(pk=run.pk))
    validator = run_validator()
    assert not validator.is_valid({**written, "surprise": 1})
    assert not validator.is_valid({k: v for k, v in written.items() if k != "log_lines"})
    assert not validator.is_valid({**written, "exit_code": "0"})


def test_every_operation_answers_errors_as_detail_and_errors():
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            for code, response in operation["responses"].items():
                if 400 <= int(code) < 500:
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (method, path, code)
            assert {"400", "401", "404"} <= set(operation["responses"]), (method, path)
    assert SCHEMAS["Error"]["required"] == ["detail", "errors"]


# ---------------------------------------------------------------- schemathesis


def _dataset_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"1,2,3\n"
        info = tarfile.TarInfo("train.csv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def live_api(engine, console_url, alice):
    """alice's console with something in it: a finished run with metrics, a dataset, a model, a secret."""
    token, secret = ApiToken.issue(alice)
    headers = {"Authorization": f"Bearer {secret}"}
    base = console_url + "/api/v1"
    finished = requests.post(base + "/runs", headers={**headers, "Content-Type": "application/yaml"}, timeout=30, data=(
        f"name: reported\nimage: {BUSYBOX}\nrun:\n  - command: echo start; echo '#runyard step=1 loss=0.5'; echo done\n"))
    assert finished.status_code == 201, finished.text
    wait_for(finished.json()["id"], "completed", timeout=120)
    live = requests.post(base + "/runs", headers={**headers, "Content-Type": "application/yaml"}, timeout=30,
                         data=f"name: sleeper\nimage: {BUSYBOX}\nrun:\n  - command: sleep 600\n")
    assert live.status_code == 201, live.text
    upload = requests.post(base + "/datasets/mnist/versions", headers={**headers, "Content-Type": "application/gzip"},
                           data=_dataset_archive(), timeout=30)
    assert upload.status_code == 201, upload.text
    model = requests.post(base + "/models/resnet/versions", headers={**headers, "Content-Type": "application/gzip"},
                          data=_dataset_archive(), timeout=30)
    assert model.status_code == 201, model.text
    secret_set = requests.put(base + "/secrets/HF_TOKEN", headers=headers, json={"value": "s3cret"}, timeout=30)
    assert secret_set.status_code == 200, secret_set.text
    return {"headers": headers, "token_id": token.pk, "run_ids": [finished.json()["id"], live.json()["id"]]}


def _pick(generated, choices: list):
    """One of `choices`, or now and then what schemathesis made up."""
    options = [*choices, generated]
    return options[zlib.crc32(repr(generated).encode()) % len(options)]


def _aim(case, live_api) -> None:
    """Point generated path parameters at things that exist, often enough."""
    path = case.operation.path
    params = case.path_parameters if case.path_parameters is not None else {}
    if path.startswith("/runs/{id}") and "id" in params:
        params["id"] = _pick(params["id"], live_api["run_ids"])
    if path.startswith("/datasets/{name}") and "name" in params:
        params["name"] = _pick(params["name"], ["mnist"])
    if path.startswith("/models/{name}") and "name" in params:
        params["name"] = _pick(params["name"], ["resnet"])
    if path.startswith("/models/{name}/versions/{version}") and "version" in params:
        params["version"] = _pick(params["version"], [1])
    if path == "/models/{name}/versions/{version}/files/raw" and case.query is not None and "path" in case.query:
        case.query["path"] = _pick(case.query["path"], ["train.csv"])
    if path == "/runs/{id}/metrics/{key}" and "key" in params:
        params["key"] = _pick(params["key"], ["loss"])
    if path.startswith("/secrets/{name}") and "name" in params:
        params["name"] = _pick(params["name"], ["HF_TOKEN"])
    if path == "/tokens/{id}" and params.get("id") == live_api["token_id"]:
        params["id"] = live_api["token_id"] + 10_000  # not the token this test signs in with


@schemathesis.serializer("application/gzip", "application/x-tar", "application/zip")
def archive_bytes(ctx, value) -> bytes:
    """Uploads are binary strings in the document: send what was generated as bytes,
    and now and then a real archive."""
    if isinstance(value, bytes):
        return value
    return _dataset_archive() if zlib.crc32(repr(value).encode()) % 3 == 0 else str(value).encode()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.slow
def test_the_api_answers_as_its_schema_says(live_api, console_url):
    """schemathesis over every operation: its examples, then generated valid and
    invalid requests. Any 5xx or undocumented answer is a failure, listed at the end."""
    api = schemathesis.openapi.from_url(console_url + "/api/v1/openapi.json")
    failures: list[str] = []
    calls = 0

    def exercise(operation, strategy, examples: int) -> None:
        @given(case=strategy)
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def one(case):
            nonlocal calls
            _aim(case, live_api)
            calls += 1
            try:
                case.call_and_validate(headers=live_api["headers"], timeout=60, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # every failure, not only the first
                failures.append(f"{operation.label}: {case.as_curl_command(headers=live_api['headers'])}\n  {str(exc)[:1500]}")

        try:
            one()
        except Unsatisfiable:
            pass  # nothing to make invalid: an operation without parameters or body

    for result in api.get_all_operations():
        operation = result.ok()
        for strategy in api.get_strategies_from_examples(operation):
            exercise(operation, strategy, 1)
        exercise(operation, operation.as_strategy(GenerationMode.POSITIVE), EXAMPLES_PER_OPERATION)
        exercise(operation, operation.as_strategy(GenerationMode.NEGATIVE), EXAMPLES_PER_OPERATION // 2)
    assert calls > 200
    assert not failures, f"{len(failures)} of {calls} requests failed:\n\n" + "\n\n".join(failures[:40])
