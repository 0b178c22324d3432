"""Models (issue 10, SPEC §8): a run's export makes a model version recording the run;
later runs import a version, or an earlier run's exported files, read-only and pinned,
so a reproduction reads the same bytes. The API, the pages and the CLI show a model's
versions with their lineage, to the model's team only.

Real Docker runs (busybox), a real Celery worker, PostgreSQL, storage and browser."""

import io
import json
import tarfile

import pytest
import yaml
from django.test import Client

from runs import model_registry
from runs.models import DatasetVersion, Model, ModelVersion, Run
from runs.services import create_run, terminate_run
from runs.spec import SpecError, dump_spec_yaml, org_warnings, parse_spec
from tests.conftest import BUSYBOX, Api, sign_in, wait_for
from tests.test_cli import assert_clean_error, cli  # noqa: F401 (the fixture)
from tests.test_reproducible import stored_bytes

FINAL = {"completed", "failed", "terminated"}


def tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def run_file(name: str, command: str, **sections) -> str:
    return yaml.safe_dump({"name": name, "image": BUSYBOX, "run": [{"command": command}], **sections})


def finished(user, source: str, **expect) -> Run:
    run = wait_for(create_run(user=user, source=source, executor="docker").pk, FINAL, removed=True)
    assert run.status == expect.get("status", "completed"), run.status_reason
    return run


def upload(user, name: str, files: dict[str, bytes]) -> ModelVersion:
    version, _ = model_registry.create_version(user.teams.get(), name, io.BytesIO(tar_gz(files)), "application/gzip", user)
    return version


# What a run that reads an import writes: its bytes, then whether the import could be written to.
READS = "cat {path} > /output/read.txt; if touch {folder}/new 2>/dev/null; then echo writable; else echo read-only; fi >> /output/read.txt"


# ---------------------------------------------------------------- spec (no services)


MINIMAL = {"name": "x", "image": BUSYBOX, "run": [{"command": "true"}]}


@pytest.mark.parametrize(("uri", "normalized"), [
    ("vessl-model://vision/weights/3", {"model": {"name": "weights", "version": 3}}),
    ("vessl-model://acme/weights", {"model": {"name": "weights", "version": None}}),
    ("model://weights@2", {"model": {"name": "weights", "version": 2}}),
    ("vessl-dataset://vision/mnist/4", {"dataset": {"name": "mnist", "version": 4}}),
    ("vessl-dataset://vision/mnist", {"dataset": {"name": "mnist", "version": None}}),
    ("run://12/output/", {"run_files": {"run": 12, "path": "/output"}}),
    ("run://12/output/model.pt", {"run_files": {"run": 12, "path": "/output/model.pt"}}),
    ("run://12", {"run_files": {"run": 12, "path": "/"}}),
    ("volume://checkpoints", {"volume": {"name": "checkpoints"}}),
])
def test_import_uris_normalize_and_dump_back(uri, normalized):
    spec = parse_spec({**MINIMAL, "import": {"/in/": uri}})
    assert spec["import"]["/in/"] == normalized
    assert parse_spec(dump_spec_yaml(spec)) == spec


@pytest.mark.parametrize(("uri", "normalized"), [
    ("vessl-model://vision/weights", {"model": {"name": "weights"}}),
    ("model://weights", {"model": {"name": "weights"}}),
    ("vessl-dataset://vision/features", {"dataset": {"name": "features"}}),
    ("dataset://features", {"dataset": {"name": "features"}}),
    ("vessl-artifact://", {"artifact": ""}),
    ("vessl-artifact://checkpoints", {"artifact": "checkpoints"}),
    ("volume://outputs", {"volume": "outputs"}),
])
def test_export_uris_normalize_and_dump_back(uri, normalized):
    spec = parse_spec({**MINIMAL, "export": {"/out/": uri}})
    assert spec["export"]["/out/"] == normalized
    assert parse_spec(dump_spec_yaml(spec)) == spec


@pytest.mark.parametrize(("section", "uri", "msg"), [
    ("import", "vessl-model://vision", "expected vessl-model://ORG/REPO or vessl-model://ORG/REPO/NUMBER"),
    ("import", "vessl-model://vision/weights/0", "model version must be a positive integer"),
    ("import", "vessl-dataset://vision/mnist/latest", "dataset version must be a positive integer"),
    ("import", "run://abc/output", "expected run://RUN_ID/PATH: the run id must be a positive integer"),
    ("import", "run://3/output/../etc", "must not contain '..'"),
    ("export", "vessl-model://vision/weights/2",
     "an export makes a new version, numbered when the run ends: write vessl-model://ORG/REPO, without a version"),
    ("export", "s3://bucket/x", "expected volume://NAME, vessl-artifact://[NAME], vessl-model://ORG/REPO or vessl-dataset://ORG/NAME"),
])
def test_bad_uris_are_refused_naming_the_path(section, uri, msg):
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, section: {"/p/": uri}})
    assert caught.value.errors == [{"loc": f'{section}["/p/"]', "msg": msg}]


def test_two_paths_exported_to_one_model_are_refused():
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, "export": {"/a/": "vessl-model://vision/m", "/b/": "model://m"}})
    assert caught.value.errors == [{"loc": 'export["/b/"]', "msg": 'model m is already exported from export["/a/"]: '
                                    "a run makes one version of a model, from one path"}]


def test_an_organization_that_is_not_the_team_is_a_warning():
    source = yaml.safe_dump({**MINIMAL, "import": {"/m/": "vessl-model://acme/weights/1", "/d/": "vessl-dataset://vision/mnist"},
                             "export": {"/o/": "vessl-model://acme/weights"}})
    assert org_warnings(source, "vision") == [
        {"loc": 'import["/m/"]', "msg": "organization 'acme' is not this run's team: team vision's model weights is used"},
        {"loc": 'export["/o/"]', "msg": "organization 'acme' is not this run's team: team vision's model weights is used"},
    ]


# ---------------------------------------------------------------- runs


def test_a_run_exports_a_model_version_that_later_runs_import_read_only_and_reproduce(alice, engine, docker_engine):
    maker = finished(alice, run_file("train", "printf 'weights v1' > /output/weights.bin",
                                     export={"/output/": "vessl-model://vision/weights"}))
    (first,) = ModelVersion.objects.filter(model__name="weights")
    assert (first.version, first.run_id, first.archive.file_count) == (1, maker.pk, 1)
    assert maker.status_reason == "exit code 0; model weights version 1"

    reader_file = run_file("evaluate", READS.format(path="/model/weights.bin", folder="/model"),
                           **{"import": {"/model/": "vessl-model://vision/weights/1"}, "export": {"/output/": "volume://reads"}})
    reader = finished(alice, reader_file)
    assert stored_bytes(reader, "/output/read.txt") == b"weights v1read-only\n"
    assert reader.imports == [{"path": "/model/", "kind": "model", "name": "weights", "version": 1,
                               "content_hash": first.archive.content_hash, "size_bytes": 10, "file_count": 1}]

    upload(alice, "weights", {"weights.bin": b"weights v2"})  # the model moves on
    response = Api(alice).post(f"/runs/{reader.pk}/reproduce")
    assert response.status_code == 201, response.content
    again = wait_for(response.json()["id"], FINAL, removed=True)
    assert again.status == "completed", again.status_reason
    assert stored_bytes(again, "/output/read.txt") == b"weights v1read-only\n"

    # No number: the newest version, pinned when the run is created; another ORG: a warning, the team's model.
    newest = finished(alice, reader_file.replace("vessl-model://vision/weights/1", "vessl-model://acme/weights"))
    assert newest.spec["import"]["/model/"] == {"model": {"name": "weights", "version": 2}}
    assert stored_bytes(newest, "/output/read.txt") == b"weights v2read-only\n"
    assert newest.warnings == [{"loc": 'import["/model/"]',
                                "msg": "organization 'acme' is not this run's team: team vision's model weights is used"}]

    body = Api(alice).get("/models/weights").json()
    assert [(v["version"], v["made_by_run"] and v["made_by_run"]["id"], v["created_by"]) for v in body["versions"]] == [
        (2, None, "alice"), (1, maker.pk, "alice")]
    assert [[run["id"] for run in v["used_by_runs"]] for v in body["versions"]] == [[newest.pk], [again.pk, reader.pk]]
    files = Api(alice).get("/models/weights/versions/1").json()["files"]
    assert files == [{"path": "weights.bin", "size": 10, "sha256": first.archive.manifest[0][2]}]
    raw = Api(alice).get("/models/weights/versions/1/files/raw", path="weights.bin")
    assert b"".join(raw.streaming_content) == b"weights v1"


def test_a_run_imports_an_earlier_runs_files_and_a_volumes_newest(alice, engine, docker_engine):
    exporter = finished(alice, run_file("checkpoint", "mkdir -p /output/ckpt && printf 'step 100' > /output/ckpt/state.txt",
                                        export={"/output/": "volume://checkpoints"}))
    reader = finished(alice, run_file(
        "resume", "cat /prev/ckpt/state.txt /vol/ckpt/state.txt /one/state.txt > /output/read.txt; "
                  "if touch /prev/x 2>/dev/null; then echo writable; else echo read-only; fi >> /output/read.txt",
        **{"import": {"/prev/": f"run://{exporter.pk}/output", "/vol/": "volume://checkpoints",
                      "/one/": f"run://{exporter.pk}/output/ckpt/state.txt"},
           "export": {"/output/": "vessl-artifact://"}}))
    assert stored_bytes(reader, "/output/read.txt") == b"step 100step 100step 100read-only\n"
    assert reader.spec["import"]["/vol/"] == {"run_files": {"run": exporter.pk, "path": "/output"}}
    assert reader.spec["import"]["/prev/"] == {"run_files": {"run": exporter.pk, "path": "/output"}}
    listed = {item["path"]: item for item in reader.imports}
    assert listed["/vol/"]["volume"] == "checkpoints" and listed["/vol/"]["file_count"] == 1
    assert listed["/prev/"]["content_hash"] == listed["/vol/"]["content_hash"]


def test_a_failed_run_makes_no_version_and_a_completed_one_makes_model_and_dataset_versions(alice, engine, docker_engine):
    exports = {"/output/": "vessl-model://vision/classifier", "/features/": "vessl-dataset://vision/features"}
    command = "printf w > /output/w.bin; printf f > /features/f.csv"
    failed = finished(alice, run_file("broken", command + "; exit 3", export=exports), status="failed")
    assert not Model.objects.filter(name="classifier").exists() and not DatasetVersion.objects.exists()
    assert failed.exports_state == "complete"  # its files are kept, in its Files tab

    made = finished(alice, run_file("fixed", command, export=exports))
    assert ModelVersion.objects.get(model__name="classifier").run_id == made.pk
    assert DatasetVersion.objects.get(dataset__name="features").run_id == made.pk
    assert made.status_reason == "exit code 0; model classifier version 1; dataset features version 1"
    # A failed run's files can still be read, by naming that run.
    reads = create_run(user=alice, source=run_file("r", "true", **{"import": {"/in/": f"run://{failed.pk}/output"}}), executor="docker")
    assert reads.imports[0]["file_count"] == 1
    assert wait_for(reads.pk, FINAL, removed=True).status == "completed"
    # vessl-dataset:// imports are Runyard datasets, pinned.
    data = create_run(user=alice, source=run_file("d", "true", **{"import": {"/d/": "vessl-dataset://vision/features"}}), executor="docker")
    assert data.spec["import"]["/d/"] == {"dataset": {"name": "features", "version": 1}}
    assert wait_for(data.pk, FINAL, removed=True).status == "completed"


def test_an_idle_run_ended_after_its_command_makes_a_version_and_one_stopped_mid_command_none(alice, engine, docker_engine):
    kept = create_run(user=alice, executor="docker", source=run_file(
        "kept", "printf k > /output/k.bin", export={"/output/": "vessl-model://vision/kept"}, termination_protection=True))
    terminate_run(wait_for(kept.pk, "idle"), actor=alice)
    assert wait_for(kept.pk, "terminated", removed=True).exports_state == "complete"
    assert ModelVersion.objects.get(model__name="kept").run_id == kept.pk

    cut = create_run(user=alice, executor="docker", source=run_file(
        "cut", "printf c > /output/c.bin; sleep 60", export={"/output/": "vessl-model://vision/cut"}, termination_grace="1s"))
    terminate_run(wait_for(cut.pk, "running"), actor=alice)
    assert wait_for(cut.pk, "terminated", removed=True).exports_state == "partial"
    assert not Model.objects.filter(name="cut").exists()


def test_what_cannot_be_imported_is_refused_at_creation_naming_the_import(alice, charlie, defaults):
    theirs = create_run(user=charlie, source=run_file("theirs", "true"), executor="docker")  # stays pending: no worker here
    mine = create_run(user=alice, source=run_file("mine", "true"), executor="docker")
    cases = {
        f"run://{theirs.pk}/output": f"run {theirs.pk} not found in team vision",
        f"run://{mine.pk}/output": f"run {mine.pk} is pending: only the files a finished run exported can be imported",
        "volume://nothing": "no run of team vision has exported files to volume://nothing yet (a completed run's exports count)",
        "vessl-model://vision/missing/1": "model 'missing' not found in team vision",
    }
    for uri, msg in cases.items():
        with pytest.raises(SpecError) as caught:
            create_run(user=alice, source=run_file("r", "true", **{"import": {"/in/": uri}}), executor="docker")
        assert caught.value.errors == [{"loc": 'import["/in/"]', "msg": msg}]
    upload(alice, "weights", {"w": b"1"})
    with pytest.raises(SpecError) as caught:
        create_run(user=alice, source=run_file("r", "true", **{"import": {"/in/": "vessl-model://vision/weights/2"}}), executor="docker")
    assert caught.value.errors == [{"loc": 'import["/in/"]', "msg": "model 'weights' has no version 2"}]


# ---------------------------------------------------------------- access


def test_teammates_read_models_viewers_cannot_upload_and_outsiders_see_nothing(alice, bob, viola, charlie):
    upload(alice, "weights", {"w.bin": b"1"})
    archive = tar_gz({"w.bin": b"2"})
    for user in (bob, viola):
        assert [m["name"] for m in Api(user).get("/models").json()["items"]] == ["weights"]
        assert Api(user).get("/models/weights").status_code == 200
    refused = Api(viola).post("/models/weights/versions", archive, content_type="application/gzip")
    assert refused.status_code == 403, refused.content
    assert refused.json()["detail"] == "viewers cannot launch or change anything in team vision"
    created = Api(bob).post("/models/weights/versions", archive, content_type="application/gzip")
    assert created.status_code == 201 and created.json()["version"] == 2

    outsider = Api(charlie)
    assert outsider.get("/models").json() == {"items": []}
    for endpoint in ("/models/weights", "/models/weights/versions/1", "/models/weights/versions/1/files/raw?path=w.bin"):
        assert outsider.get(endpoint).status_code == 404, endpoint
    assert outsider.get("/models/weights", team="vision").json()["errors"] == [{"loc": "team", "msg": "not a team of yours"}]
    assert outsider.post("/models/their-own/versions", archive, content_type="application/gzip").json()["version"] == 1
    assert ModelVersion.objects.filter(model__team__name="vision").count() == 2

    pages = Client()
    pages.force_login(charlie)
    assert pages.get("/models/weights/").status_code == 404
    assert pages.get("/models/weights/?team=vision").status_code == 404
    assert b"w.bin" not in pages.get("/models/?team=vision").content
    pages.force_login(viola)
    page = pages.get("/models/weights/")
    assert page.status_code == 200 and b"w.bin" in page.content


def test_the_pages_show_versions_with_their_lineage(alice, engine, docker_engine, chromium, console_url):
    upload(alice, "weights", {"weights.bin": b"base", "config.json": b"{}"})
    tuned = finished(alice, run_file("fine-tune", "cat /model/weights.bin > /output/weights.bin; printf ' tuned' >> /output/weights.bin",
                                     **{"import": {"/model/": "vessl-model://vision/weights/1"},
                                        "export": {"/output/": "vessl-model://vision/weights"}}))
    browser = sign_in(chromium, console_url, alice)
    page = browser.page
    try:
        page.get_by_role("link", name="Models").click()
        page.wait_for_url("**/models/")
        row = page.locator("#models-table tbody tr")
        assert row.locator("td").nth(1).inner_text() == "version 2"
        assert f"run #{tuned.pk}" in row.inner_text()
        browser.screenshot("models-list")

        page.get_by_role("link", name="weights").click()
        page.wait_for_url("**/models/weights/**")
        assert page.locator("#v2 .made-by").inner_text().startswith(f"run #{tuned.pk}")
        assert page.locator("#v1 .made-by").inner_text() == "upload by alice"
        assert page.locator("#v1 .used-by").inner_text().startswith(f"#{tuned.pk}")
        assert page.locator("#import-snippet").inner_text().strip().endswith("/model/: vessl-model://vision/weights/2")
        assert page.locator("#version-files tbody td:first-child").all_inner_texts() == ["weights.bin"]
        browser.screenshot("model-detail")

        page.locator("#v1 a").first.click()
        page.wait_for_url("**version=1**")
        assert page.locator("#version-files tbody td:first-child").all_inner_texts() == ["config.json", "weights.bin"]

        page.locator(f"#v1 .used-by a[href='/runs/{tuned.pk}/']").click()
        page.wait_for_url(f"**/runs/{tuned.pk}/")
        assert page.locator("#versions-made").inner_text() == "Made model weights version 2."
        assert "model weights version 1" in page.locator("ul.imports").inner_text()
        browser.screenshot("run-with-model-lineage")
    finally:
        page.context.close()
    phone = sign_in(chromium, console_url, alice, width=390, height=844)
    try:
        for name, path in (("models-list-390", "/models/"), ("model-detail-390", "/models/weights/")):
            phone.goto(path)
            overflow = phone.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
            phone.screenshot(name)
    finally:
        phone.page.context.close()


# ---------------------------------------------------------------- CLI


def test_the_cli_creates_lists_and_shows_models(cli, tmp_path, viola):  # noqa: F811
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.bin").write_bytes(b"\0" * 2000)
    created = cli("model", "create", "resnet", str(weights))
    assert created.returncode == 0, created.stderr
    assert created.stdout == "model resnet: new version 1 (1 file, 2.0 KB)\n"
    assert "unchanged" in cli("model", "create", "resnet", str(weights)).stdout

    listed = cli("model", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "LATEST", "VERSIONS", "FILES", "SIZE", "MADE", "BY", "CREATED"]
    assert listed[1].split()[:8] == ["resnet", "1", "1", "1", "2.0", "KB", "upload", "by"]
    shown = cli("model", "show", "resnet").stdout.splitlines()
    assert shown[0] == "model resnet: latest version 1"
    assert shown[2].split()[:4] == ["1", "upload", "by", "alice"]
    files = cli("model", "show", "resnet", "--version", "1", "--json")
    assert [f["path"] for f in json.loads(files.stdout)["files"]] == ["model.bin"]

    refused = cli("model", "create", "resnet", str(weights), token=viola.token)
    assert_clean_error(refused, "viewers cannot launch or change anything in team vision")
    assert_clean_error(cli("model", "show", "nothing"), "model 'nothing' not found")
