import json
import pickle
import textwrap

import pytest

from runs.spec import SpecError, dump_spec_yaml, parse_spec

FULL_EXAMPLE = """\
name: mnist-train
description: optional text
tags: [baseline, mnist]
image: runyard/python:3.11
resources:
  cluster: default
  preset: cpu-small
import:
  /code/:
    git: {url: https://host/org/repo.git, ref: main}
  /data/: dataset://mnist
export:
  /output/: volume://outputs
run:
  - command: pip install -r requirements.txt
  - command: python train.py --epochs $EPOCHS
    workdir: /code
env:
  EPOCHS: "3"
  HF_TOKEN: {secret: HF_TOKEN}
termination_protection: false
termination_grace: 10s
"""

MINIMAL = {"name": "n", "image": "img", "run": [{"command": "true"}]}


def errors_of(source) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(source)
    return caught.value.errors


def only_error(source) -> dict[str, str]:
    errors = errors_of(source)
    assert len(errors) == 1, errors
    return errors[0]


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def test_it_parses_the_full_example_into_a_normalized_spec():
    spec = parse_spec(FULL_EXAMPLE)

    assert spec == {
        "name": "mnist-train",
        "description": "optional text",
        "tags": ["baseline", "mnist"],
        "image": "runyard/python:3.11",
        "image_credential": None,
        "resources": {"cluster": "default", "preset": "cpu-small"},
        "import": {
            "/code/": {"git": {"url": "https://host/org/repo.git", "ref": "main"}},
            "/data/": {"dataset": {"name": "mnist", "version": None}},
        },
        "export": {"/output/": {"volume": "outputs"}},
        "run": [
            {"command": "pip install -r requirements.txt", "workdir": None},
            {"command": "python train.py --epochs $EPOCHS", "workdir": "/code"},
        ],
        "env": {"EPOCHS": "3", "HF_TOKEN": {"secret": "HF_TOKEN"}},
        "termination_protection": False,
        "termination_grace_seconds": 10.0,
        "ports": [],
        "interactive": None,
    }
    assert json.loads(json.dumps(spec)) == spec


def test_it_fills_every_default_for_a_minimal_dict_and_does_not_share_input_objects():
    source = {**MINIMAL, "tags": ["a", "b", "a"], "import": {"/code": {"git": {"url": "u"}}}}

    spec = parse_spec(source)

    assert spec == {
        "name": "n",
        "description": "",
        "tags": ["a", "b"],
        "image": "img",
        "image_credential": None,
        "resources": {"cluster": "default", "preset": "cpu-small"},
        "import": {"/code": {"git": {"url": "u", "ref": "HEAD"}}},
        "export": {},
        "run": [{"command": "true", "workdir": None}],
        "env": {},
        "termination_protection": False,
        "termination_grace_seconds": 10.0,
        "ports": [],
        "interactive": None,
    }
    spec["run"][0]["command"] = "changed"
    assert source["run"][0]["command"] == "true"


def test_it_accepts_json_text_and_bytes_like_yaml():
    as_json = json.dumps(MINIMAL)

    assert parse_spec(as_json) == parse_spec(as_json.encode()) == parse_spec(MINIMAL)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (45, 45.0), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1m30s", 90.0)],
)
def test_it_parses_durations_as_seconds(value, seconds):
    spec = parse_spec({**MINIMAL, "termination_grace": value})

    assert spec["termination_grace_seconds"] == seconds


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        (True, "expected a duration like 10s"),
        ("10", "expected a duration like 10s"),
        ("30s1m", "expected a duration like 10s"),
        (1.5, "expected a duration like 10s"),
        (-1, "must be between 0 and 3600 seconds"),
        ("1h1s", "must be between 0 and 3600 seconds"),
    ],
)
def test_it_rejects_bad_durations(value, msg):
    assert only_error({**MINIMAL, "termination_grace": value}) == {"loc": "termination_grace", "msg": msg}


def test_it_reports_invalid_yaml_with_line_and_column_and_an_empty_loc():
    error = only_error("name: x\nrun: [\n")

    assert error["loc"] == ""
    assert error["msg"].startswith("invalid YAML:")
    assert "line 3, column 1" in error["msg"]


@pytest.mark.parametrize(
    ("source", "msg"),
    [
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("", "expected a mapping at the top level"),
        ("name: a\n---\nname: b\n", "expected a single YAML document, found several"),
        ("name: x\ndescription: " + "x" * 256 * 1024 + "\n", "spec is larger than 256 KiB"),
    ],
)
def test_it_rejects_documents_that_are_not_one_small_mapping(source, msg):
    assert only_error(source) == {"loc": "", "msg": msg}


def test_it_refuses_python_tags_because_it_only_loads_safely():
    error = only_error("!!python/object/apply:os.system ['echo pwned']\n")

    assert error["loc"] == ""
    assert error["msg"].startswith("invalid YAML: could not determine a constructor")


@pytest.mark.parametrize(
    ("source", "loc"),
    [
        ("name: a\nname: b\n", "name"),
        ("resources:\n  cluster: a\n  cluster: b\n", "resources.cluster"),
        ("env:\n  EPOCHS: '1'\n  EPOCHS: '2'\n", 'env["EPOCHS"]'),
        ("run:\n  - command: a\n  - command: b\n    command: c\n", "run[1].command"),
    ],
)
def test_it_reports_duplicate_keys_at_the_repeated_key(source, loc):
    error = only_error(source)

    assert error["loc"] == loc
    assert error["msg"].startswith("duplicate key (line ")


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"gpu": 1}, "gpu"),
        ({"termination_grace_seconds": 3}, "termination_grace_seconds"),
        ({"resources": {"gpu": 1}}, "resources.gpu"),
        ({"import": {"/code/": {"git": {"url": "u", "depth": 1}}}}, 'import["/code/"].git.depth'),
        ({"import": {"/code/": {"git": {"url": "u"}, "lfs": True}}}, 'import["/code/"].lfs'),
        ({"run": [{"command": "x", "shell": "bash"}]}, "run[0].shell"),
        ({"env": {"TOKEN": {"secret": "T", "version": 2}}}, 'env["TOKEN"].version'),
    ],
)
def test_it_reports_unknown_keys_at_every_level(extra, loc):
    assert only_error({**MINIMAL, **extra}) == {"loc": loc, "msg": "unknown key"}


@pytest.mark.parametrize(
    ("extra", "loc", "msg"),
    [
        ({"name": 5}, "name", "expected a string"),
        ({"name": "x" * 201}, "name", "must be at most 200 characters"),
        ({"image": "my image"}, "image", "must not contain whitespace"),
        ({"description": ["x"]}, "description", "expected a string"),
        ({"tags": "baseline"}, "tags", "expected a list"),
        ({"tags": ["ok", ""]}, "tags[1]", "must not be empty"),
        ({"tags": ["x" * 65]}, "tags[0]", "must be at most 64 characters"),
        ({"resources": ["cpu"]}, "resources", "expected a mapping"),
        ({"import": ["/code/"]}, "import", "expected a mapping"),
        ({"import": {"/code/": {"git": {"url": 3}}}}, 'import["/code/"].git.url', "expected a string"),
        ({"run": {"command": "x"}}, "run", "expected a command, or a list of steps (each a command string, {command, workdir} or {wait: DURATION})"),
        ({"run": []}, "run", "must not be empty"),
        ({"run": [7]}, "run[0]", "expected a command string, {command, workdir} or {wait: DURATION}"),
        ({"run": [{"command": "x", "workdir": 1}]}, "run[0].workdir", "expected a string"),
        ({"run": [{"command": "x", "workdir": "code"}]}, "run[0].workdir", "expected an absolute path"),
        ({"termination_protection": 1}, "termination_protection", "expected a boolean"),
        ({"termination_protection": "true"}, "termination_protection", "expected a boolean"),
    ],
)
def test_it_reports_wrong_types_and_values_at_their_loc(extra, loc, msg):
    assert only_error({**MINIMAL, **extra}) == {"loc": loc, "msg": msg}


def test_it_reports_missing_required_fields():
    source = {"import": {"/code/": {"git": {}}}, "run": [{"workdir": "/"}], "env": {"T": {}}}

    assert errors_of(source) == [
        {"loc": 'import["/code/"].git.url', "msg": "required"},
        {"loc": "run[0].command", "msg": "required"},
        {"loc": 'env["T"].secret', "msg": "required"},
        {"loc": "name", "msg": "required"},
        {"loc": "image", "msg": "required"},
    ]


def test_it_keeps_unquoted_env_values_as_written_and_rejects_bad_or_reserved_names():
    source = yaml_text("""
        name: n
        image: img
        run: [{command: "true"}]
        env:
          EPOCHS: 3
          LR: 0.10
          DEBUG: yes
          RUNYARD_RUN_ID: x
          1BAD: x
    """)

    assert errors_of(source) == [
        {"loc": 'env["RUNYARD_RUN_ID"]', "msg": "names starting with RUNYARD_ are reserved"},
        {"loc": 'env["1BAD"]', "msg": "invalid variable name; use letters, digits and _, not starting with a digit"},
    ]
    assert parse_spec(source.split("  RUNYARD_RUN_ID")[0])["env"] == {"EPOCHS": "3", "LR": "0.10", "DEBUG": "yes"}


@pytest.mark.parametrize(
    ("section", "path", "value", "msg"),
    [
        ("import", "code/", "dataset://mnist", "expected an absolute path"),
        ("import", "/", "dataset://mnist", "must not be the root directory"),
        ("import", "/data/../etc", "dataset://mnist", "must not contain '..'"),
        ("import", "/data/", "dataset://mnist@0", "dataset version must be a positive integer"),
        ("import", "/data/", "dataset://mnist@latest", "dataset version must be a positive integer"),
        ("export", "/output/", "volume://", "expected volume://NAME"),
        ("export", "/output/", {"volume": "x"}, "expected a string"),
        ("export", "output", "volume://outputs", "expected an absolute path"),
    ],
)
def test_it_validates_import_and_export_paths_and_sources(section, path, value, msg):
    error = only_error({**MINIMAL, section: {path: value}})

    assert error == {"loc": f"{section}[{json.dumps(path)}]", "msg": msg}


@pytest.mark.parametrize(("value", "starts"), [("mnist", "unknown source 'mnist': expected "), (7, "expected a source: ")])
def test_an_unknown_import_source_lists_the_forms_there_are(value, starts):
    error = only_error({**MINIMAL, "import": {"/data/": value}})

    assert error["loc"] == 'import["/data/"]'
    assert error["msg"].startswith(starts)
    for form in ("git://HOST/ORG/REPO[@REF]", "dataset://NAME[@VERSION]", "code://HASH", "hf://huggingface.co/ORG/REPO", "{git: {url, ref}}"):
        assert form in error["msg"]


def test_it_parses_versioned_datasets():
    spec = parse_spec({**MINIMAL, "import": {"/data/": "dataset://mnist-v2.1_x@12"}})

    assert spec["import"]["/data/"] == {"dataset": {"name": "mnist-v2.1_x", "version": 12}}


def test_it_collects_all_errors_at_once_in_document_order():
    source = yaml_text("""
        run:
          - command: train
            workdir: 3
        tags: [ok, 5]
        resources: {gpu: 1}
        env: {EPOCHS: [3]}
        termination_grace: forever
    """)

    with pytest.raises(SpecError) as caught:
        parse_spec(source)

    assert [(e["loc"], e["msg"]) for e in caught.value.errors] == [
        ("run[0].workdir", "expected a string"),
        ("tags[1]", "expected a string"),
        ("resources.gpu", "unknown key"),
        ('env["EPOCHS"]', "expected a value (text, a number or true/false) or {secret: NAME}"),
        ("termination_grace", "expected a duration like 10s"),
        ("name", "required"),
        ("image", "required"),
    ]
    assert str(caught.value).startswith("run[0].workdir: expected a string; tags[1]: expected a string; ")
    assert str(caught.value).endswith("; name: required; image: required")


def test_it_keeps_spec_errors_intact_through_pickling():
    error = SpecError([{"loc": "name", "msg": "required"}])

    restored = pickle.loads(pickle.dumps(error))

    assert restored.errors == error.errors
    assert str(restored) == "name: required"


def test_it_roundtrips_the_full_example_through_dump_spec_yaml():
    spec = parse_spec(FULL_EXAMPLE)

    dumped = dump_spec_yaml(spec)

    assert parse_spec(dumped) == spec
    assert "termination_grace: 10s" in dumped
    assert "/data/: dataset://mnist\n" in dumped
    assert "/output/: volume://outputs" in dumped


def test_it_roundtrips_tricky_values_and_omits_empty_optional_fields():
    spec = parse_spec(
        {
            **MINIMAL,
            "tags": ["3", "yes", "null", "a: b"],
            "import": {"/data/": "dataset://mnist@3"},
            "run": [{"command": "set -e\npython train.py  --lr 0.1\n", "workdir": "/"}, {"command": " x"}],
            "env": {"EMPTY": "", "FLAG": "true", "TOKEN": {"secret": "HF"}},
            "termination_protection": True,
            "termination_grace": "1h",
        }
    )
    minimal_spec = parse_spec({**MINIMAL, "termination_grace": "1m30s500ms"})

    dumped = dump_spec_yaml(spec)
    dumped_minimal = dump_spec_yaml(minimal_spec)

    assert parse_spec(dumped) == spec
    assert parse_spec(dumped_minimal) == minimal_spec
    assert "dataset://mnist@3" in dumped
    assert "command: |" in dumped
    assert "termination_grace: 1h\n" in dumped
    assert "termination_grace: 1m30s500ms\n" in dumped_minimal
    for omitted in ("description", "tags", "import", "export", "env", "workdir"):
        assert f"{omitted}:" not in dumped_minimal


def test_it_finds_the_line_an_error_names():
    from runs.spec import line_of

    source = 'name: x\nimage: 3\nrun:\n  - command: true\n    workdir: 5\nextra: 1\nimport:\n  /code/:\n    git: {url: 3}\n'
    assert [line_of(source, loc) for loc in ("image", "run[0].workdir", "extra", 'import["/code/"].git.url')] == [2, 5, 6, 9]
    assert line_of(source, "") is None and line_of("a: [", "a") is None
