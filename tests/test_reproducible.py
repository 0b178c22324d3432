"""Reproduce means the same run: code, data, image and env pinned (issue 3).

Real git repositories, real storage, a real Docker engine and Celery worker."""

import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import yaml
from django.core.files.storage import default_storage

from runs.datasets import create_version, remove_version
from runs.models import DatasetVersion, LogChunk, Run, RunEvent, RunFile, TeamSecret
from runs.services import create_run, reproduce_run
from tests.conftest import BUSYBOX, Api, wait_for

FINAL = {"completed", "failed", "terminated"}


def tar_gz(files: dict[str, bytes]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    out.seek(0)
    return out


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin"})


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.sh").write_text("echo model v1\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "v1")
    return path


def result_sha(run: Run) -> str:
    return RunFile.objects.get(run=run, path="/output/result.txt").sha256


def stored_bytes(run: Run, path: str) -> bytes:
    with default_storage.open(RunFile.objects.get(run=run, path=path).storage_name, "rb") as f:
        return f.read()


def spec_for(repo, **extra) -> str:
    return yaml.safe_dump({
        "name": "deterministic",
        "image": BUSYBOX,
        "import": {"/code/": {"git": {"url": f"file://{repo}", "ref": "main"}}, "/data/": "dataset://numbers"},
        "export": {"/output/": "volume://outputs"},
        "run": [{"command": "mkdir -p /output && { sh /code/train.sh; cat /data/numbers.txt; echo $SEED; } > /output/result.txt; cat /output/result.txt"}],
        "env": {"SEED": "7"},
        **extra,
    })


def test_a_reproduction_reads_the_same_code_and_data_and_writes_the_same_bytes(alice, engine, docker_engine, repo):
    create_version(alice.teams.get(), "numbers", tar_gz({"numbers.txt": b"1 2 3\n"}), "application/gzip", alice)
    original = wait_for(create_run(user=alice, source=spec_for(repo), executor="docker").pk, FINAL, removed=True)
    assert original.status == "completed", original.status_reason
    assert stored_bytes(original, "/output/result.txt") == b"model v1\n1 2 3\n7\n"
    kinds = {item["kind"]: item for item in original.imports}
    assert len(kinds["git"]["commit"]) == 40 and kinds["dataset"]["version"] == 1
    assert original.spec["import"]["/code/"]["git"]["commit"] == kinds["git"]["commit"]

    # The world moves on: a new commit on the branch, a new dataset version.
    (repo / "train.sh").write_text("echo model v2\n")
    git(repo, "commit", "-q", "-am", "v2")
    create_version(alice.teams.get(), "numbers", tar_gz({"numbers.txt": b"4 5 6\n"}), "application/gzip", alice)

    response = Api(alice).post(f"/runs/{original.pk}/reproduce")
    assert response.status_code == 201, response.content
    copy = wait_for(response.json()["id"], FINAL, removed=True)
    assert copy.status == "completed", copy.status_reason
    assert result_sha(copy) == result_sha(original)
    assert copy.image_digest == original.image_digest
    assert copy.imports == original.imports

    fresh = wait_for(create_run(user=alice, source=spec_for(repo), executor="docker").pk, FINAL, removed=True)
    assert fresh.status == "completed", fresh.status_reason
    assert result_sha(fresh) != result_sha(original)
    assert stored_bytes(fresh, "/output/result.txt") == b"model v2\n4 5 6\n7\n"


def test_a_reproduction_with_changes_records_them(alice, engine, docker_engine, repo):
    create_version(alice.teams.get(), "numbers", tar_gz({"numbers.txt": b"1\n"}), "application/gzip", alice)
    original = wait_for(create_run(user=alice, source=spec_for(repo), executor="docker").pk, "completed", removed=True)
    response = Api(alice).post(f"/runs/{original.pk}/reproduce", json.dumps({"env": {"SEED": "8"}}), content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["changes"] == {"env": {"from": {"SEED": "7"}, "to": {"SEED": "8"}}}
    assert body["spec"]["import"] == original.spec["import"]
    copy = wait_for(body["id"], "completed", removed=True)
    assert stored_bytes(copy, "/output/result.txt") == b"model v1\n1\n8\n"
    refused = Api(alice).post(f"/runs/{original.pk}/reproduce", json.dumps({"image": "other"}), content_type="application/json")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["loc"] == "image"


def test_a_reproduction_whose_dataset_version_was_removed_fails_naming_it(alice, engine, docker_engine, repo):
    version, _ = create_version(alice.teams.get(), "numbers", tar_gz({"numbers.txt": b"1\n"}), "application/gzip", alice)
    original = wait_for(create_run(user=alice, source=spec_for(repo), executor="docker").pk, "completed", removed=True)
    remove_version(version)
    copy = wait_for(reproduce_run(original, actor=alice).pk, FINAL, removed=True)
    assert copy.status == "failed"
    assert copy.status_reason == "dataset numbers@1 is no longer available (removed)"


def test_a_reproduction_whose_image_was_deleted_fails_naming_it(alice, engine, docker_engine):
    # An image of its own (a unique label gives it a digest of its own), run once, then deleted.
    image = f"runyard/throwaway:{alice.pk}"
    dockerfile = io.BytesIO(f"FROM {BUSYBOX}\nLABEL runyard.test={hashlib.sha1(image.encode()).hexdigest()}-{alice.pk}\n".encode())
    built, _ = docker_engine.images.build(fileobj=dockerfile, tag=image, rm=True)
    spec = yaml.safe_dump({"name": "pinned", "image": image, "run": [{"command": "echo hi"}]})
    original = wait_for(create_run(user=alice, source=spec, executor="docker").pk, "completed", removed=True)
    assert original.image_digest == built.id
    docker_engine.images.remove(built.id, force=True)
    copy = wait_for(reproduce_run(original, actor=alice).pk, FINAL, removed=True)
    assert copy.status == "failed"
    assert image in copy.status_reason and built.id in copy.status_reason


def test_it_exports_a_thousand_small_files_and_a_200_mb_file(alice, engine, docker_engine):
    command = (
        "mkdir -p /output/many && i=0; while [ $i -lt 1000 ]; do echo \"file $i\" > /output/many/f$i.txt; i=$((i+1)); done;"
        " head -c 209715200 /dev/zero > /output/big.bin"
    )
    spec = yaml.safe_dump({"name": "exports", "image": BUSYBOX, "export": {"/output/": "volume://out"}, "run": [{"command": command}]})
    run = wait_for(create_run(user=alice, source=spec, executor="docker").pk, FINAL, timeout=300, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.exports_state == "complete"
    files = {f.path: f for f in RunFile.objects.filter(run=run)}
    assert len(files) == 1001
    assert files["/output/big.bin"].size == 209715200
    assert files["/output/big.bin"].sha256 == hashlib.sha256(b"\0" * 209715200).hexdigest()
    for i in (0, 499, 999):
        small = files[f"/output/many/f{i}.txt"]
        assert small.size == len(f"file {i}\n") and small.sha256 == hashlib.sha256(f"file {i}\n".encode()).hexdigest()
    api = Api(alice)
    top = api.get(f"/runs/{run.pk}/files").json()["entries"]
    assert {"path": "/output", "is_dir": True} == {k: top[0][k] for k in ("path", "is_dir")}
    listing = api.get(f"/runs/{run.pk}/files", path="/output").json()["entries"]
    assert [e["path"] for e in listing] == ["/output/many", "/output/big.bin"]
    assert listing[0]["files"] == 1000
    raw = api.get(f"/runs/{run.pk}/files/raw", path="/output/many/f7.txt")
    assert raw.status_code == 200 and b"".join(raw.streaming_content) == b"file 7\n"
    assert api.get(f"/runs/{run.pk}/files/raw", path="/etc/passwd").status_code == 404


def test_a_terminated_run_keeps_its_checkpoints_marked_partial(alice, engine, docker_engine):
    command = "mkdir -p /ckpt && echo step-1 > /ckpt/latest && echo saved && sleep 300"
    spec = yaml.safe_dump({"name": "ckpt", "image": BUSYBOX, "export": {"/ckpt/": "volume://ckpt"}, "run": [{"command": command}], "termination_grace": "1s"})
    run = create_run(user=alice, source=spec, executor="docker")
    wait_for(run.pk, "running")
    from tests.test_engine import wait_for_log

    wait_for_log(run, "saved")
    assert Api(alice).post(f"/runs/{run.pk}/terminate").status_code == 202
    run = wait_for(run.pk, "terminated", removed=True)
    saved = RunFile.objects.get(run=run, path="/ckpt/latest")
    assert saved.partial and run.exports_state == "partial"
    assert stored_bytes(run, "/ckpt/latest") == b"step-1\n"


def test_a_secret_value_is_stored_nowhere_but_encrypted(alice, engine, docker_engine):
    value = "hf_s3cr3t-VALUE-4242"
    api = Api(alice)
    put = api.client.put("/api/v1/secrets/HF_TOKEN", json.dumps({"value": value}), content_type="application/json", headers=api.headers)
    assert put.status_code == 200 and value not in put.content.decode()
    spec = yaml.safe_dump({
        "name": "secretive", "image": BUSYBOX, "env": {"HF_TOKEN": {"secret": "HF_TOKEN"}},
        "run": [{"command": 'echo "token is $HF_TOKEN"; echo "length ${#HF_TOKEN}"'}],
    })
    created = api.post("/runs", spec)
    assert created.status_code == 201
    run = wait_for(created.json()["id"], FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    texts = [line for chunk in LogChunk.objects.filter(run=run) for _, _, line in chunk.lines]
    assert texts == ["token is ********", f"length {len(value)}"]  # it reached the run, masked in the log
    answers = [api.get(endpoint).content.decode() for endpoint in
               (f"/runs/{run.pk}", f"/runs/{run.pk}/events", f"/runs/{run.pk}/logs", "/secrets", "/runs")]
    rows = [json.dumps(r, default=str) for r in Run.objects.filter(pk=run.pk).values()] + [json.dumps(list(RunEvent.objects.filter(run=run).values_list("reason", flat=True)))]
    for text in answers + rows:
        assert value not in text
    assert value.encode() not in bytes(TeamSecret.objects.get(name="HF_TOKEN").ciphertext)
    streamed = b"".join(api.get(f"/runs/{run.pk}/logs.txt").streaming_content).decode()
    assert value not in streamed and "token is ********" in streamed


@pytest.mark.parametrize(
    "imports, env, loc, words",
    [
        ({"/data/": "dataset://missing"}, {}, 'import["/data/"]', "dataset 'missing' not found"),
        ({"/data/": "dataset://numbers@9"}, {}, 'import["/data/"]', "has no version 9"),
        ({"/code/": {"git": {"url": "file:///nonexistent/repo.git"}}}, {}, 'import["/code/"].git.url', "could not read"),
        ({"/code/": {"git": {"url": "REPO", "ref": "no-such-branch"}}}, {}, 'import["/code/"].git.ref', "no-such-branch"),
        ({"/code/": "code://" + "a" * 64}, {}, 'import["/code/"]', "not found"),
        ({}, {"TOKEN": {"secret": "NOPE"}}, 'env["TOKEN"]', "'NOPE' not found"),
    ],
)
def test_an_import_or_secret_that_cannot_be_resolved_is_a_400_naming_it(alice, repo, imports, env, loc, words):
    create_version(alice.teams.get(), "numbers", tar_gz({"n.txt": b"1"}), "application/gzip", alice)
    for source in imports.values():
        if isinstance(source, dict) and source["git"]["url"] == "REPO":
            source["git"]["url"] = str(repo)
    spec = yaml.safe_dump({"name": "bad", "image": BUSYBOX, "import": imports, "env": env, "run": [{"command": "true"}]})
    response = Api(alice).post("/runs", spec)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["loc"] for e in errors] == [loc]
    assert words in errors[0]["msg"]
    assert Run.objects.count() == 0


def test_local_processes_refuse_imports_saying_why(alice, engine):
    create_version(alice.teams.get(), "numbers", tar_gz({"n.txt": b"1"}), "application/gzip", alice)
    spec = yaml.safe_dump({"name": "local", "image": BUSYBOX, "import": {"/data/": "dataset://numbers"}, "run": [{"command": "true"}]})
    run = wait_for(create_run(user=alice, source=spec, executor="local").pk, FINAL, removed=True)
    assert run.status == "failed"
    assert "need the Docker executor" in run.status_reason


def test_datasets_are_versioned_by_content_through_the_api(alice, viola):
    api = Api(alice)
    first = api.client.post("/api/v1/datasets/mnist/versions", tar_gz({"a.txt": b"A"}).getvalue(), content_type="application/gzip", headers=api.headers)
    assert first.status_code == 201 and first.json()["version"] == 1
    same = api.client.post("/api/v1/datasets/mnist/versions", tar_gz({"a.txt": b"A"}).getvalue(), content_type="application/gzip", headers=api.headers)
    assert same.status_code == 200 and same.json()["version"] == 1
    second = api.client.post("/api/v1/datasets/mnist/versions", tar_gz({"a.txt": b"B"}).getvalue(), content_type="application/gzip", headers=api.headers)
    assert second.status_code == 201 and second.json()["version"] == 2
    assert second.json()["content_hash"] != first.json()["content_hash"]
    listed = api.get("/datasets").json()["items"]
    assert listed[0]["name"] == "mnist" and listed[0]["latest_version"] == 2
    not_archive = api.client.post("/api/v1/datasets/mnist/versions", b"not an archive", content_type="application/gzip", headers=api.headers)
    assert not_archive.status_code == 400
    unsafe = api.client.post("/api/v1/datasets/evil/versions", tar_gz({"../escape.txt": b"x"}).getvalue(), content_type="application/gzip", headers=api.headers)
    assert unsafe.status_code == 400 and "unsafe path" in unsafe.json()["detail"]
    viewer = Api(viola)
    refused = viewer.client.post("/api/v1/datasets/mnist/versions", tar_gz({"a.txt": b"C"}).getvalue(), content_type="application/gzip", headers=viewer.headers)
    assert refused.status_code == 403
    assert DatasetVersion.objects.filter(dataset__name="mnist").count() == 2


def test_a_dataset_version_can_be_uploaded_in_the_admin(alice, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    alice.is_staff = alice.is_superuser = True
    alice.save()
    client.force_login(alice)
    team = alice.teams.get()
    upload = SimpleUploadedFile("cifar.tar.gz", tar_gz({"x.txt": b"pixels"}).getvalue(), content_type="application/gzip")
    response = client.post("/admin/runs/dataset/add/", {"team": team.pk, "name": "cifar", "archive": upload})
    assert response.status_code == 302
    version = DatasetVersion.objects.get(dataset__name="cifar")
    assert version.version == 1 and version.archive.manifest == [["x.txt", 6, hashlib.sha256(b"pixels").hexdigest()]]
    page = client.get(response["Location"])
    assert page.status_code == 200 and version.archive.content_hash in page.content.decode()


def test_a_secret_set_in_the_admin_is_never_shown_there(alice, client):
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client.force_login(alice)
    team = alice.teams.get()
    response = client.post("/admin/runs/teamsecret/add/", {"team": team.pk, "name": "WANDB_KEY", "value": "wandb-value-123"})
    assert response.status_code == 302
    secret = TeamSecret.objects.get(name="WANDB_KEY")
    change_page = client.get(f"/admin/runs/teamsecret/{secret.pk}/change/").content.decode()
    assert "wandb-value-123" not in change_page
    assert b"wandb-value-123" not in bytes(secret.ciphertext)
