"""VESSL run files as their users write them (issue 10, SPEC §8).

The table holds every form of SPEC §8, each accepted and normalized as expected or
refused naming its field and why (models, ports and credentials included). Then whole run files in the shape of
VESSL's published examples go through POST /runs?dry_run=true, `runyard run validate`
and the New run page; and real runs use the list-of-strings and wait forms."""

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest
from django.test import Client, override_settings

from runs import logstore
from runs.datasets import create_version
from runs.models import Dataset, DatasetVersion, Model, ModelVersion, Run, RunEvent, Team, TeamSecret
from runs.services import create_run, terminate_run
from runs.spec import SpecError, dump_spec_yaml, parse_spec, parse_spec_with_warnings
from runs.team_secrets import set_secret
from tests.conftest import BUSYBOX, ROOT, Api, wait_for
from tests.test_reproducible import git, tar_gz

BASE = "name: forms\nimage: runyard/busybox:latest\n"


def document(snippet: str) -> str:
    """A whole run file: the snippet as it is if it starts with its name, else with a
    name, an image and a command where it has none."""
    if snippet.startswith("name:"):
        return snippet

    def has(key: str) -> bool:
        return snippet.startswith(key + ":") or f"\n{key}:" in snippet

    text = "name: forms\n" + ("" if has("image") else "image: runyard/busybox:latest\n") + snippet
    return text if has("run") or has("service") else text + "run: echo hi\n"


def accepted(id_, snippet, key, expected):
    return pytest.param(snippet, key, expected, id=id_)


def refused(id_, snippet, loc, says):
    return pytest.param(snippet, loc, says, id=id_)


# ---------------------------------------------------------------- every form of SPEC §8: accepted

ACCEPTED = [
    # image
    accepted("image-string", "image: runyard/python:3.11\n", "image", "runyard/python:3.11"),
    accepted("image-url-credential", "image:\n  url: registry.example.org/team/train:1\n  credential_name: team-registry\n",
             ("image", "image_credential"), ("registry.example.org/team/train:1", "team-registry")),
    # run
    accepted("run-single-string", "run: python train.py\n", "run", [{"command": "python train.py", "workdir": None}]),
    accepted("run-list-of-strings", "run:\n  - pip install -r requirements.txt\n  - python train.py\n", "run",
             [{"command": "pip install -r requirements.txt", "workdir": None}, {"command": "python train.py", "workdir": None}]),
    accepted("run-command-workdir", "run:\n  - command: python train.py\n    workdir: /code\n", "run",
             [{"command": "python train.py", "workdir": "/code"}]),
    accepted("run-wait", "run:\n  - echo before\n  - wait: 10s\n  - echo after\n", "run",
             [{"command": "echo before", "workdir": None}, {"wait_seconds": 10.0}, {"command": "echo after", "workdir": None}]),
    accepted("run-wait-units", "run:\n  - wait: 1m30s\n  - wait: 500ms\n  - wait: 2\n", "run",
             [{"wait_seconds": 90.0}, {"wait_seconds": 0.5}, {"wait_seconds": 2.0}]),
    accepted("run-mixed", "run:\n  - echo one\n  - command: echo two\n    workdir: /tmp\n  - {wait: 1s}\n", "run",
             [{"command": "echo one", "workdir": None}, {"command": "echo two", "workdir": "/tmp"}, {"wait_seconds": 1.0}]),
    accepted("run-multiline-string", "run: |\n  set -e\n  python train.py\n", "run", [{"command": "set -e\npython train.py\n", "workdir": None}]),
    # import
    accepted("import-git-shorthand", "import:\n  /code/: git://github.com/org/repo.git@v1\n", "import",
             {"/code/": {"git": {"url": "https://github.com/org/repo.git", "ref": "v1"}}}),
    accepted("import-git-shorthand-no-suffix-no-ref", "import:\n  /code/: git://github.com/org/repo\n", "import",
             {"/code/": {"git": {"url": "https://github.com/org/repo", "ref": "HEAD"}}}),
    accepted("import-git-shorthand-subgroup", "import:\n  /code/: git://gitlab.example.org/group/sub/repo.git@feature/x\n", "import",
             {"/code/": {"git": {"url": "https://gitlab.example.org/group/sub/repo.git", "ref": "feature/x"}}}),
    accepted("import-git-verbose", "import:\n  /code/:\n    git: {url: https://github.com/org/repo.git, ref: main}\n", "import",
             {"/code/": {"git": {"url": "https://github.com/org/repo.git", "ref": "main"}}}),
    accepted("import-git-credential", "import:\n  /code/:\n    git:\n      url: https://github.com/org/private.git\n"
             "      ref: main\n      credential_name: team-git\n", "import",
             {"/code/": {"git": {"url": "https://github.com/org/private.git", "ref": "main", "credential": "team-git"}}}),
    accepted("import-dataset", "import:\n  /data/: dataset://mnist@3\n", "import", {"/data/": {"dataset": {"name": "mnist", "version": 3}}}),
    accepted("import-vessl-dataset", "import:\n  /data/: vessl-dataset://vision/mnist\n", "import",
             {"/data/": {"dataset": {"name": "mnist", "version": None}}}),
    accepted("import-vessl-dataset-version", "import:\n  /data/: vessl-dataset://vision/mnist/2\n", "import",
             {"/data/": {"dataset": {"name": "mnist", "version": 2}}}),
    accepted("import-vessl-model", "import:\n  /model/: vessl-model://vision/resnet/4\n", "import",
             {"/model/": {"model": {"name": "resnet", "version": 4}}}),
    accepted("import-run-files", "import:\n  /prev/: run://12/output/ckpt\n", "import",
             {"/prev/": {"run_files": {"run": 12, "path": "/output/ckpt"}}}),
    accepted("import-volume", "import:\n  /prev/: volume://outputs\n", "import", {"/prev/": {"volume": {"name": "outputs"}}}),
    accepted("import-hf", "import:\n  /model/: hf://huggingface.co/openai-community/gpt2\n", "import",
             {"/model/": {"remote": {"url": "hf://huggingface.co/openai-community/gpt2"}}}),
    accepted("import-hf-dataset-revision", "import:\n  /data/: hf://huggingface.co/datasets/org/corpus@v2\n", "import",
             {"/data/": {"remote": {"url": "hf://huggingface.co/datasets/org/corpus@v2"}}}),
    accepted("import-s3", "import:\n  /data/: s3://my-bucket/mnist/\n", "import", {"/data/": {"remote": {"url": "s3://my-bucket/mnist/"}}}),
    accepted("import-gs", "import:\n  /data/: gs://my-bucket/mnist\n", "import", {"/data/": {"remote": {"url": "gs://my-bucket/mnist"}}}),
    # export
    accepted("export-volume", "export:\n  /output/: volume://outputs\n", "export", {"/output/": {"volume": "outputs"}}),
    accepted("export-artifact-named", "export:\n  /output/: vessl-artifact://checkpoints\n", "export",
             {"/output/": {"artifact": "checkpoints"}}),
    accepted("export-artifact-unnamed", "export:\n  /output/: vessl-artifact://\n", "export", {"/output/": {"artifact": ""}}),
    accepted("export-vessl-model", "export:\n  /model/: vessl-model://vision/resnet\n", "export",
             {"/model/": {"model": {"name": "resnet"}}}),
    accepted("export-vessl-dataset", "export:\n  /data/: vessl-dataset://vision/cleaned\n", "export",
             {"/data/": {"dataset": {"name": "cleaned"}}}),
    # env
    accepted("env-int", "env:\n  EPOCHS: 3\n", "env", {"EPOCHS": "3"}),
    accepted("env-float", "env:\n  LR: 0.5\n", "env", {"LR": "0.5"}),
    accepted("env-bool", "env:\n  DEBUG: true\n", "env", {"DEBUG": "true"}),
    accepted("env-as-written", "env:\n  LR: 0.10\n  SEED: 010\n  VERBOSE: yes\n  BIG: 1_000\n  DAY: 2024-05-01\n", "env",
             {"LR": "0.10", "SEED": "010", "VERBOSE": "yes", "BIG": "1_000", "DAY": "2024-05-01"}),
    accepted("env-string", "env:\n  MODEL: gpt2\n", "env", {"MODEL": "gpt2"}),
    accepted("env-secret-name", "env:\n  HF_TOKEN: {secret: HF_TOKEN}\n", "env", {"HF_TOKEN": {"secret": "HF_TOKEN"}}),
    accepted("env-inline-secret", "env:\n  WANDB_KEY: {value: abc123-inline, secret: true}\n", "env", {"WANDB_KEY": {"inline_secret": True}}),
    accepted("env-inline-plain-number", "env:\n  SEED: {value: 010}\n", "env", {"SEED": "010"}),
    # ports
    accepted("ports-mapping", "ports:\n  - {name: tensorboard, type: http, port: 6006}\n  - {name: ssh, type: tcp, port: 22}\n", "ports",
             [{"name": "tensorboard", "type": "http", "port": 6006}, {"name": "ssh", "type": "tcp", "port": 22}]),
    accepted("ports-bare-number", "ports:\n  - 8888\n", "ports", [{"name": "8888", "type": "http", "port": 8888}]),
    # interactive
    accepted("interactive", "interactive:\n  max_runtime: 24h\n  jupyter:\n    idle_timeout: 120m\n", "interactive",
             {"max_runtime_seconds": 86400.0, "jupyter_idle_timeout_seconds": 7200.0}),
    accepted("interactive-without-run", "name: ws\nimage: runyard/python:3.11\ninteractive:\n  max_runtime: 8h\n", "run", []),
    # resources
    accepted("resources", "resources:\n  cluster: default\n  preset: cpu-small\n", "resources", {"cluster": "default", "preset": "cpu-small"}),
]


@pytest.mark.parametrize(("snippet", "key", "expected"), ACCEPTED)
def test_every_form_is_accepted_and_normalized(snippet, key, expected):
    spec = parse_spec(document(snippet))
    keys, values = (key, expected) if isinstance(key, tuple) else ((key,), (expected,))
    for one_key, value in zip(keys, values):
        if value is not None:
            assert spec[one_key] == value
    if "value:" in snippet:  # an inline secret's value never enters the spec
        assert "abc123-inline" not in json.dumps(spec)
    assert parse_spec(dump_spec_yaml(spec)) == spec  # what a reproduce page shows reads back the same


def test_the_same_forms_sent_as_json_are_normalized_alike():
    spec = parse_spec({"name": "j", "image": BUSYBOX, "run": ["echo a", {"wait": "2s"}], "env": {"E": 3, "L": 0.5, "D": True, "F": False}})

    assert spec["run"] == [{"command": "echo a", "workdir": None}, {"wait_seconds": 2.0}]
    assert spec["env"] == {"E": "3", "L": "0.5", "D": "true", "F": "false"}


def test_an_alias_shared_with_env_keeps_its_type_elsewhere():
    spec = parse_spec(BASE + "run: echo\ntermination_grace: &grace 5\nenv:\n  GRACE: *grace\n")

    assert spec["termination_grace_seconds"] == 5.0 and spec["env"] == {"GRACE": "5"}


# ---------------------------------------------------------------- refused, naming the field and why

REFUSED = [
    refused("legacy-accelerators", "accelerators: v100:1\n", "accelerators", "write resources: {preset: NAME}"),
    refused("legacy-resources-cpu", "resources:\n  cpu: 4\n", "resources.cpu", "write resources: {preset: NAME}"),
    refused("legacy-resources-memory", "resources:\n  memory: 12Gi\n", "resources.memory", "write resources: {preset: NAME}"),
    refused("legacy-resources-accelerators", "resources:\n  accelerators: v100:2\n", "resources.accelerators", "write resources: {preset: NAME}"),
    refused("legacy-resources-requests", "resources:\n  requests: {cpu: '4'}\n", "resources.requests", "write resources: {preset: NAME}"),
    refused("legacy-volumes", "volumes:\n  /data: {import: 'dataset://mnist'}\n", "volumes", "write import: {PATH: SOURCE}"),
    refused("service-file", "name: llama\nmessage: serve llama\nimage: vllm/vllm-openai\nservice:\n  autoscaling: {min: 1}\n",
            "message", "a service, not a run"),
    refused("service-key-only", "service:\n  expose: 8000\n", "service", "a service, not a run"),
    refused("template-plain", "image: {{ image }}\n", "image", "line 2: {{ image }} is a template"),
    refused("template-in-command", "run:\n  - python train.py --lr {{ inputs.lr }}\n", "run[0]", "line 4: {{ inputs.lr }} is a template"),
    refused("template-breaking-yaml", "image: {{ registry }}/train:1\n", "image", "line 2: {{ registry }} is a template"),
    refused("run-step-both", "run:\n  - {command: echo, wait: 1s}\n", "run[0]", "either {command, workdir} or {wait: DURATION}, not both"),
    refused("run-wait-not-a-duration", "run:\n  - wait: soon\n", "run[0].wait", "expected a duration like 10s"),
    refused("run-wait-too-long", "run:\n  - wait: 1000h\n", "run[0].wait", "must be between 0 and 30 days"),
    refused("run-step-number", "run:\n  - 42\n", "run[0]", "expected a command string, {command, workdir} or {wait: DURATION}"),
    refused("git-shorthand-without-repo", "import:\n  /code/: git://github.com\n", 'import["/code/"]', "expected git://HOST/ORG/REPO[.git][@REF]"),
    refused("hf-other-host", "import:\n  /m/: hf://example.org/org/repo\n", 'import["/m/"]', "expected hf://huggingface.co/ORG/REPO"),
    refused("s3-without-bucket", "import:\n  /d/: s3://\n", 'import["/d/"]', "expected s3://BUCKET/PATH"),
    refused("unknown-scheme", "import:\n  /d/: ftp://host/file\n", 'import["/d/"]', "unknown source 'ftp://host/file': expected "),
    refused("env-null", "env:\n  EMPTY:\n", 'env["EMPTY"]', 'has no value: write "" for an empty one'),
    refused("env-list", "env:\n  LIST: [1, 2]\n", 'env["LIST"]', "expected a value (text, a number or true/false)"),
    refused("ports-bad-type", "ports:\n  - {name: x, type: udp, port: 53}\n", "ports[0].type", "http"),
]


@pytest.mark.parametrize(("snippet", "loc", "says"), REFUSED)
def test_every_refusal_names_the_field_and_why(snippet, loc, says):
    with pytest.raises(SpecError) as refusal:
        parse_spec(document(snippet))
    assert [error["loc"] for error in refusal.value.errors] == [loc]
    message = refusal.value.errors[0]["msg"]
    assert says in message
    assert message != "unknown key"


def test_a_template_in_a_comment_is_not_refused():
    assert parse_spec(BASE + "# fill in {{ image }} before use\nrun: echo\n")["name"] == "forms"


def test_a_template_sent_as_json_names_its_field():
    with pytest.raises(SpecError) as refusal:
        parse_spec({"name": "j", "image": BUSYBOX, "run": [{"command": "echo {{ greeting }}"}]})
    assert refusal.value.errors == [{"loc": "run[0].command", "msg": "{{ greeting }} is a template: Runyard does not fill in templates;"
                                     " write the value itself"}]


def test_a_key_that_changes_nothing_here_is_a_warning_not_an_error():
    spec, warnings = parse_spec_with_warnings(document("resources:\n  preset: cpu-small\n  node_names: [n01, n03]\n"))

    assert spec["resources"] == {"cluster": "default", "preset": "cpu-small"}
    assert warnings == [{"loc": "resources.node_names", "msg": "ignored: the cluster chooses the node (a Swarm places the run where there is room)"}]


# ---------------------------------------------------------------- POST /runs?dry_run=true


def dry_run(api: Api, body, content_type="application/yaml", team: str | None = None):
    response = api.post("/runs?dry_run=true" + (f"&team={team}" if team else ""), body, content_type)
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "code"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('training')\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "first")
    return path


def head(repo) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def counts() -> dict:
    return {model.__name__: model.objects.count() for model in (Run, RunEvent, Dataset, DatasetVersion, Model, ModelVersion, TeamSecret)}


def test_dry_run_resolves_like_creation_and_writes_nothing(api, alice, repo):
    create_version(alice.teams.get(), "mnist", tar_gz({"train.csv": b"1,2\n"}), "application/gzip", alice)
    create_version(alice.teams.get(), "mnist", tar_gz({"train.csv": b"3,4\n"}), "application/gzip", alice)
    source = (BASE + f"import:\n  /code/:\n    git: {{url: 'file://{repo}', ref: main}}\n  /data/: dataset://mnist\n"
              "run:\n  - python train.py\n  - wait: 5s\nenv:\n  EPOCHS: 3\n")
    before = counts()

    answer = dry_run(api, source)

    assert answer["valid"] is True and answer["errors"] == [] and answer["warnings"] == []
    assert answer["spec"]["import"] == {
        "/code/": {"git": {"url": f"file://{repo}", "ref": "main", "commit": head(repo)}},
        "/data/": {"dataset": {"name": "mnist", "version": 2}},
    }
    assert answer["spec"]["run"][1] == {"wait_seconds": 5.0} and answer["spec"]["env"] == {"EPOCHS": "3"}
    assert counts() == before

    created = api.post("/runs", source)  # and creating it freezes the very same spec
    assert created.status_code == 201, created.content
    assert created.json()["spec"] == answer["spec"]


def test_dry_run_of_a_bad_file_is_200_with_every_error_by_field_and_line(api):
    source = "name: x\nimage: 3\nrun:\n  - command: echo\n    workdir: code\naccelerators: v100:1\n"

    answer = dry_run(api, source)

    assert answer["valid"] is False and answer["spec"] is None
    assert [(e["loc"], e["line"]) for e in answer["errors"]] == [("image", 2), ("run[0].workdir", 5), ("accelerators", 6)]
    assert answer["errors"][1]["msg"] == "expected an absolute path"
    assert Run.objects.count() == 0


def test_dry_run_reports_what_the_installation_lacks_with_the_file_as_read(api, alice):
    source = document("resources:\n  preset: huge\n  node_names: [n1]\nenv:\n  HF_TOKEN: {secret: HF_TOKEN}\n"
                      "import:\n  /data/: dataset://nowhere\n")

    answer = dry_run(api, source)

    assert answer["valid"] is False
    assert answer["spec"]["resources"] == {"cluster": "default", "preset": "huge"}  # the file as read
    assert {e["loc"] for e in answer["errors"]} == {"resources.preset", 'import["/data/"]', 'env["HF_TOKEN"]'}
    assert [(w["loc"], w["line"]) for w in answer["warnings"]] == [("resources.node_names", 5)]
    assert Run.objects.count() == 0


def test_dry_run_warns_when_a_vessl_organization_is_not_the_team(api, alice):
    create_version(alice.teams.get(), "mnist", tar_gz({"train.csv": b"1\n"}), "application/gzip", alice)

    answer = dry_run(api, document("import:\n  /data/: vessl-dataset://acme/mnist\n"))

    assert answer["valid"] is True and answer["spec"]["import"] == {"/data/": {"dataset": {"name": "mnist", "version": 1}}}
    assert [(w["loc"], w["line"]) for w in answer["warnings"]] == [('import["/data/"]', 4)]
    assert "'acme' is not this run's team" in answer["warnings"][0]["msg"]


def test_dry_run_says_when_the_team_is_out_of_credits(api, alice):
    Team.objects.filter(name="vision").update(credit_limit=0)

    answer = dry_run(api, document(""))

    assert answer["valid"] is False
    assert [e["loc"] for e in answer["errors"]] == ["team.credit_limit"]


def test_dry_run_takes_json_and_has_no_lines_then(api):
    answer = dry_run(api, json.dumps({"name": "j", "image": BUSYBOX, "run": ["echo", {"wait": "nope"}]}), "application/json")

    assert answer["errors"] == [{"loc": "run[1].wait", "msg": "expected a duration like 10s", "line": None}]


def test_dry_run_is_refused_like_creation_to_a_viewer_and_an_outsider(viola, charlie):
    assert Api(viola).post("/runs?dry_run=true", document("")).status_code == 403
    assert Api(charlie).post("/runs?dry_run=true&team=vision", document("")).status_code == 404
    assert Api(None).post("/runs?dry_run=true", document("")).status_code == 401


def test_dry_run_must_be_true_or_false(api):
    response = api.post("/runs?dry_run=maybe", document(""))
    assert response.status_code == 400
    assert response.json()["errors"] == [{"loc": "dry_run", "msg": "expected true or false"}]
    assert api.post("/runs?dry_run=false", document("")).status_code == 201


# ---------------------------------------------------------------- sources that need the network

HF = "hf://huggingface.co/openai-community/gpt2"


@override_settings(RUNYARD_NETWORK_SOURCES="off")
@pytest.mark.parametrize(("source", "host"), [
    (HF, "huggingface.co"),
    ("s3://my-bucket/mnist", "s3.amazonaws.com"),
    ("gs://my-bucket/mnist", "storage.googleapis.com"),
    ("git://github.com/org/repo.git@v1", "github.com"),
])
def test_a_network_source_this_installation_cannot_reach_is_refused_at_creation(api, source, host):
    spec = document(f"import:\n  /data/: {source}\n")

    response = api.post("/runs", spec)

    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["loc"].startswith('import["/data/"]')
    assert error["msg"].endswith(f"needs network access to {host}, which this installation cannot reach")
    assert source.partition("@v1")[0].replace("git://", "https://") in error["msg"]
    assert Run.objects.count() == 0


@override_settings(RUNYARD_NETWORK_SOURCES="probe", RUNYARD_NETWORK_PROBE_SECONDS=1, RUNYARD_HF_ENDPOINT="https://huggingface.invalid")
def test_the_probe_itself_finds_a_host_that_does_not_answer(api):
    answer = dry_run(api, document(f"import:\n  /model/: {HF}\n"))

    assert answer["errors"] == [{"loc": 'import["/model/"]', "line": 4,
                                 "msg": f"{HF} needs network access to huggingface.invalid, which this installation cannot reach"}]


def hf_mirror(tmp_path, files: dict[str, str]) -> str:
    """A Hugging Face repository as git serves it, on this machine's disk."""
    repo = tmp_path / "hf" / "openai-community" / "gpt2"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "weights")
    return f"file://{tmp_path / 'hf'}"


def test_an_hf_repository_that_answers_is_pinned_to_its_commit(api, tmp_path):
    endpoint = hf_mirror(tmp_path, {"config.json": '{"n_layer": 12}\n', ".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n"})
    with override_settings(RUNYARD_HF_ENDPOINT=endpoint):
        answer = dry_run(api, document(f"import:\n  /model/: {HF}@main\n"))

    assert answer["valid"] is True, answer["errors"]
    repo = tmp_path / "hf" / "openai-community" / "gpt2"
    assert answer["spec"]["import"]["/model/"] == {"remote": {
        "url": f"{HF}@main", "git": {"url": f"{endpoint}/openai-community/gpt2", "ref": "main", "commit": head(repo)}}}


def test_an_hf_repository_with_files_in_git_lfs_is_refused_naming_them(api, tmp_path):
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 548118077\n"
    endpoint = hf_mirror(tmp_path, {"config.json": "{}\n", "model.safetensors": pointer})
    with override_settings(RUNYARD_HF_ENDPOINT=endpoint):
        answer = dry_run(api, document(f"import:\n  /model/: {HF}\n"))

    assert answer["valid"] is False
    assert answer["errors"][0]["msg"].startswith(f"{HF} keeps 1 file in Git LFS (model.safetensors), which this installation cannot fetch")


# ---------------------------------------------------------------- whole VESSL run files

# In the shape of VESSL's published examples (docs.vessl.ai: the YAML reference and its
# quickstarts), written here for these tests.
MNIST_TRAINING = """\
name: pytorch-mnist
description: Train a CNN on MNIST with PyTorch.
tags:
  - mnist
  - "pytorch"
resources:
  cluster: default
  preset: cpu-small
image: runyard/python:3.11
import:
  /code/: git://github.com/vessl-ai/examples.git@main
  /data/: dataset://mnist
export:
  /output/: vessl-artifact://mnist-checkpoints
run:
  - command: pip install -r requirements.txt
    workdir: /code/mnist/pytorch
  - command: python main.py --save-model --output-path /output
    workdir: /code/mnist/pytorch
env:
  EPOCHS: 5
  LEARNING_RATE: 0.01
  USE_CUDA: false
"""

JUPYTER_INTERACTIVE = """\
name: gpu-interactive-run
description: Run an interactive Jupyter and SSH server.
resources:
  cluster: default
  preset: cpu-small
image: runyard/python:3.11
import:
  /root/examples: git://github.com/vessl-ai/examples
interactive:
  max_runtime: 24h
  jupyter:
    idle_timeout: 120m
ports:
  - name: tensorboard
    type: http
    port: 6006
"""

LLM_FINE_TUNE = """\
name: llama-finetune
description: Fine-tune a small language model with LoRA.
tags: [llm, lora]
resources:
  cluster: default
  preset: cpu-small
image: runyard/python:3.11
import:
  /model/: hf://huggingface.co/openai-community/gpt2
  /code/: git://github.com/vessl-ai/hub-model.git@v0.3
export:
  /output/: volume://llm-checkpoints
run:
  - pip install -r requirements.txt
  - python finetune.py --model /model --output /output --epochs $EPOCHS --lr $LR
  - wait: 10s
env:
  EPOCHS: 3
  LR: 0.0002
  LORA_R: 8
  BF16: true
  HF_TOKEN:
    secret: HF_TOKEN
"""

LEGACY_BATCH = """\
name: legacy-batch
image: quay.io/vessl-ai/torch:2.1.0-cuda12.2
resources:
  cluster: aws-apne2
  accelerators: v100:1
  cpu: 4
  memory: 16Gi
volumes:
  /input:
    import: vessl-dataset://org/mnist
run: python train.py
"""


@pytest.fixture
def offline():
    """This machine has no route out; say so without probing, so the answers do not depend on it."""
    with override_settings(RUNYARD_NETWORK_SOURCES="off"):
        yield


def test_an_llm_fine_tune_is_refused_only_for_the_network_it_lacks(api, alice, offline):
    set_secret(alice.teams.get(), "HF_TOKEN", "hf_not_a_real_token", alice)
    answer = dry_run(api, LLM_FINE_TUNE)

    assert answer["valid"] is False
    assert [(e["loc"], e["line"], e["msg"]) for e in answer["errors"]] == [
        ('import["/model/"]', 9, f"{HF} needs network access to huggingface.co, which this installation cannot reach"),
        ('import["/code/"].git.url', 10, "https://github.com/vessl-ai/hub-model.git needs network access to github.com,"
                                         " which this installation cannot reach"),
    ]
    spec = answer["spec"]
    assert spec["env"] == {"EPOCHS": "3", "LR": "0.0002", "LORA_R": "8", "BF16": "true", "HF_TOKEN": {"secret": "HF_TOKEN"}}
    assert spec["run"][-1] == {"wait_seconds": 10.0}
    assert spec["import"]["/code/"] == {"git": {"url": "https://github.com/vessl-ai/hub-model.git", "ref": "v0.3"}}


def test_the_same_fine_tune_is_valid_where_its_sources_answer(api, alice, tmp_path, repo):
    set_secret(alice.teams.get(), "HF_TOKEN", "hf_not_a_real_token", alice)
    endpoint = hf_mirror(tmp_path, {"config.json": "{}\n"})
    reachable = LLM_FINE_TUNE.replace("git://github.com/vessl-ai/hub-model.git@v0.3", f"{{git: {{url: 'file://{repo}', ref: main}}}}")
    with override_settings(RUNYARD_HF_ENDPOINT=endpoint):
        answer = dry_run(api, reachable)

    assert answer["valid"] is True, answer["errors"]
    assert answer["spec"]["import"]["/model/"]["remote"]["git"]["commit"] == head(tmp_path / "hf" / "openai-community" / "gpt2")


def test_an_mnist_training_with_an_artifact_export_is_refused_only_for_the_network(api, alice, offline):
    create_version(alice.teams.get(), "mnist", tar_gz({"train.csv": b"1\n"}), "application/gzip", alice)
    answer = dry_run(api, MNIST_TRAINING)

    assert [(e["loc"], e["line"]) for e in answer["errors"]] == [('import["/code/"].git.url', 11)]
    assert answer["spec"]["export"] == {"/output/": {"artifact": "mnist-checkpoints"}}
    assert answer["spec"]["env"] == {"EPOCHS": "5", "LEARNING_RATE": "0.01", "USE_CUDA": "false"}


def test_a_jupyter_interactive_run_is_refused_only_for_the_network(api, offline):
    answer = dry_run(api, JUPYTER_INTERACTIVE)

    assert [e["loc"] for e in answer["errors"]] == ['import["/root/examples"].git.url']
    assert answer["spec"]["interactive"] == {"max_runtime_seconds": 86400.0, "jupyter_idle_timeout_seconds": 7200.0}
    assert answer["spec"]["ports"] == [{"name": "tensorboard", "type": "http", "port": 6006}]


def test_a_legacy_file_is_refused_with_what_to_write_instead(api):
    answer = dry_run(api, LEGACY_BATCH)

    assert [(e["loc"], e["line"]) for e in answer["errors"]] == [
        ("resources.accelerators", 5), ("resources.cpu", 6), ("resources.memory", 7), ("volumes", 8)]
    assert all("write " in e["msg"] for e in answer["errors"])


# ---------------------------------------------------------------- runyard run validate


def validate(console_url, user, path, *extra):
    env = {**os.environ, "HOME": str(path.parent), "RUNYARD_URL": console_url, "RUNYARD_TOKEN": user.token}
    return subprocess.run([sys.executable, "-m", "runyard", "run", "validate", "-f", str(path), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_runyard_run_validate_prints_the_problems_and_exits_non_zero(console_url, alice, engine, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LEGACY_BATCH)
    result = validate(console_url, alice, bad)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[:3] == [
        f"{bad}: not valid: 4 problems",
        "  line 5  resources.accelerators: set by the resource preset here: write resources: {preset: NAME}"
        " (a preset has CPU, memory and GPUs)",
        "  line 6  resources.cpu: set by the resource preset here: write resources: {preset: NAME} (a preset has CPU, memory and GPUs)",
    ]
    as_json = validate(console_url, alice, bad, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["valid"] is False


def test_runyard_run_validate_shows_what_the_run_would_use(console_url, alice, engine, tmp_path, repo):
    good = tmp_path / "good.yaml"
    good.write_text(BASE + f"import:\n  /code/: {{git: {{url: 'file://{repo}', ref: main}}}}\nresources:\n  node_names: [a]\n"
                    "run:\n  - python /code/train.py\n  - wait: 10s\nenv:\n  EPOCHS: 3\n")
    result = validate(console_url, alice, good)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{good}: valid, with 1 warning"
    assert lines[1:3] == ["warnings:", "  line 6  resources.node_names: ignored: the cluster chooses the node"
                          " (a Swarm places the run where there is room)"]
    assert f"  import     /code/ <- file://{repo} main = commit {head(repo)}" in lines
    assert "  run[1]    wait 10 s" in lines and "  env        EPOCHS=3" in lines
    assert Run.objects.count() == 0


# ---------------------------------------------------------------- real runs


def test_a_run_of_strings_and_a_wait_step_completes_with_its_log(alice, engine, docker_engine):
    source = BASE + "run:\n  - echo first\n  - wait: 2s\n  - echo second $EPOCHS\nenv:\n  EPOCHS: 3\n"
    run = create_run(user=alice, source=source, executor="docker")

    run = wait_for(run.pk, "completed", timeout=60, removed=True)

    lines = logstore.read_lines(run, after=0, limit=100)["lines"]
    assert [line["text"] for line in lines] == ["first", "second 3"]
    printed = [datetime.fromisoformat(line["t"].replace("Z", "+00:00")) for line in lines]
    # The wait waited (the engine stamps each line as it reads it, so allow it some slack).
    assert (printed[1] - printed[0]).total_seconds() >= 1.5

    # Reproduced with changed commands from its page, the wait step stays a wait step.
    page = Client()
    page.force_login(alice)
    shown = page.get(f"/runs/{run.pk}/reproduce/").content.decode()
    assert "echo first\nwait: 2s\necho second $EPOCHS</textarea>" in shown
    page.post(f"/runs/{run.pk}/reproduce/", {"mode": "changed", "env": "EPOCHS=4", "commands": "echo first\nwait: 1s\necho third"})
    again = Run.objects.get(reproduced_from=run)
    assert again.spec["run"] == [{"command": "echo first", "workdir": None}, {"wait_seconds": 1.0}, {"command": "echo third", "workdir": None}]


def test_a_wait_step_works_in_an_image_with_nothing_but_sh(alice, engine, docker_engine):
    from tests.test_vessl_promises import SH_ONLY

    subprocess.run([str(ROOT / "images" / "build.sh"), SH_ONLY], check=True, stdout=subprocess.DEVNULL)
    run = create_run(user=alice, source=f"name: sh-only\nimage: {SH_ONLY}\nrun:\n  - echo before\n  - wait: 1s\n  - echo after\n",
                     executor="docker")

    run = wait_for(run.pk, "completed", timeout=60, removed=True)

    lines = logstore.read_lines(run, after=0, limit=100)["lines"]  # two streams: their order between them is not kept
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == ["before", "after"]
    assert [line["text"] for line in lines if line["stream"] == "stderr"] == [
        "runyard: this image has no sleep command: waiting 1s on the clock, which keeps a CPU busy"]


def test_an_interactive_run_without_steps_waits_idle_for_its_terminal(alice, engine, docker_engine):
    run = create_run(user=alice, source=f"name: workspace\nimage: {BUSYBOX}\ninteractive:\n  max_runtime: 1h\n", executor="docker")

    run = wait_for(run.pk, "idle", timeout=60)

    assert run.exit_code == 0
    terminate_run(run, actor=alice)
    assert wait_for(run.pk, "terminated", timeout=60, removed=True).status == "terminated"


# ---------------------------------------------------------------- the New run page


def test_the_new_run_page_checks_the_yaml_as_it_is_typed(browser):
    page = browser.page
    browser.goto("/runs/new/")
    editor = page.get_by_label("Run YAML")
    typed = BASE + "resources:\n  cpu: 4\n  node_names: [n1]\nrun:\n  - echo hi\n  - wait: soon\nenv:\n  EPOCHS: 3\n"
    editor.fill("")
    editor.press_sequentially(typed)  # typed, not pasted: an input event for each key
    page.wait_for_function("""() => {
        const errors = document.getElementById('spec-errors'), warnings = document.getElementById('spec-warnings');
        return errors && warnings && errors.textContent.includes('resources.cpu') && errors.textContent.includes('run[1].wait');
    }""")
    errors = page.locator("#spec-errors").inner_text().replace("\n", " ")
    assert "The spec has 2 problems" in errors
    assert "line 4 resources.cpu set by the resource preset here" in errors
    assert "line 8 run[1].wait expected a duration like 10s" in errors
    assert "line 5 resources.node_names ignored" in page.locator("#spec-warnings").inner_text().replace("\n", " ")
    assert editor.input_value() == typed  # nothing lost, nothing rewritten
    browser.screenshot("run-new-checked-as-typed")

    page.get_by_role("link", name="line 8").click()  # selects the line in the editor
    assert page.evaluate("() => { const a = document.getElementById('spec'); return a.value.slice(a.selectionStart, a.selectionEnd); }") \
        == "  - wait: soon"

    editor.fill(typed.replace("  cpu: 4\n", "").replace("wait: soon", "wait: 2s"))
    page.wait_for_function("() => document.querySelector('#spec-valid') !== null")
    assert "Creating it now starts run “forms”" in page.locator("#spec-valid").inner_text()
    assert page.locator("#spec-errors").count() == 0
    browser.screenshot("run-new-valid")
    assert Run.objects.count() == 0  # checking created nothing
