"""Imports cannot be borrowed (issue 7): an import cache belongs to a team and a
source, and a commit is always fetched from the URL the run names.

Real git repositories (file:// with RUNYARD_GIT_ALLOW_FILE=1), a real Docker engine
and Celery worker."""

import json

import pytest
import yaml

from runs.models import LogChunk, Run, RunEvent
from runs.services import create_run, reproduce_run
from tests.conftest import BUSYBOX, Api, wait_for
from tests.test_reproducible import git

FINAL = {"completed", "failed", "terminated"}
PRIVATE = "vision-private-weights-7731"


def make_repo(path, files: dict[str, str]):
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "first")
    return path


def head(repo) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def private_repo(tmp_path):
    """Team vision's private code."""
    return make_repo(tmp_path / "vision-model", {"secret.txt": PRIVATE + "\n"})


@pytest.fixture
def other_repo(tmp_path):
    """A repository team speech may read: nothing of vision's in it."""
    return make_repo(tmp_path / "speech-model", {"readme.txt": "speech\n"})


def git_spec(url: str, ref: str) -> str:
    return yaml.safe_dump({
        "name": "reads-code", "image": BUSYBOX,
        "import": {"/code/": {"git": {"url": url, "ref": ref}}},
        "run": [{"command": "cat /code/* 2>&1; ls -la /code"}],
    })


def log_text(run: Run) -> str:
    return "\n".join(line for chunk in LogChunk.objects.filter(run=run) for _, _, line in chunk.lines)


def import_volumes(docker_engine, commit: str) -> set[str]:
    """The filled import volumes holding `commit` (one per cache key; a volume is
    filled once its `-ready` marker exists)."""
    names = {v.name for v in docker_engine.volumes.list(filters={"label": "runyard.import"})}
    return {name for name in names if f"-git-{commit[:12]}-" in name and f"{name}-ready" in names}


def remove_volumes(docker_engine, commit: str):
    for volume in docker_engine.volumes.list(filters={"label": "runyard.import"}):
        if f"-git-{commit[:12]}-" in volume.name:
            volume.remove(force=True)


def test_another_team_naming_a_cached_commit_with_another_url_never_reads_it(alice, charlie, engine, docker_engine, private_repo, other_repo):
    commit = head(private_repo)
    try:
        # Team vision's run fills the cache with its private tree.
        first = wait_for(create_run(user=alice, source=git_spec(f"file://{private_repo}", "main"), executor="docker").pk, FINAL, removed=True)
        assert first.status == "completed", first.status_reason
        assert PRIVATE in log_text(first)
        assert len(import_volumes(docker_engine, commit)) == 1

        # Team speech names vision's commit with a URL of its own: refused at creation, naming the commit.
        response = Api(charlie).post("/runs", git_spec(f"file://{other_repo}", commit))
        assert response.status_code == 400, response.content
        errors = response.json()["errors"]
        assert errors[0]["loc"] == 'import["/code/"].git.ref'
        assert commit in errors[0]["msg"]
        assert PRIVATE not in response.content.decode()
        assert not Run.objects.filter(owner=charlie).exists()

        # A frozen spec carrying the commit (as a reproduction does) gets no further:
        # the start fetches it from speech's URL, which lacks it, and fails at initializing.
        own = wait_for(create_run(user=charlie, source=git_spec(f"file://{other_repo}", "main"), executor="docker").pk, FINAL, removed=True)
        assert own.status == "completed", own.status_reason
        spec = json.loads(json.dumps(own.spec))
        spec["import"]["/code/"]["git"]["commit"] = commit
        Run.objects.filter(pk=own.pk).update(spec=spec)
        own.refresh_from_db()
        borrowed = wait_for(reproduce_run(own, actor=charlie).pk, FINAL, removed=True)
        assert borrowed.status == "failed"
        assert commit in borrowed.status_reason
        events = list(RunEvent.objects.filter(run=borrowed).order_by("at", "pk").values_list("from_status", "to_status"))
        assert events[-1] == ("initializing", "failed")
        assert PRIVATE not in log_text(borrowed)
        assert len(import_volumes(docker_engine, commit)) == 1  # vision's only
    finally:
        remove_volumes(docker_engine, commit)


def test_a_commit_the_repository_lacks_fails_naming_it(alice, private_repo):
    missing = "0123456789abcdef0123456789abcdef01234567"
    response = Api(alice).post("/runs", git_spec(f"file://{private_repo}", missing))
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert error["loc"] == 'import["/code/"].git.ref'
    assert f"commit {missing} not found" in error["msg"]
    assert Run.objects.count() == 0


def test_two_teams_reading_the_same_repository_get_separate_caches_and_one_team_shares_its_own(
    alice, bob, charlie, engine, docker_engine, private_repo
):
    commit = head(private_repo)
    try:
        for user, url in ((alice, f"file://{private_repo}"), (bob, f"{private_repo}/"), (charlie, f"file://{private_repo}/")):
            run = wait_for(create_run(user=user, source=git_spec(url, commit), executor="docker").pk, FINAL, removed=True)
            assert run.status == "completed", run.status_reason
            assert PRIVATE in log_text(run)  # each may read this repository: it is on their path
        # alice and bob (one team, two spellings of one URL) share a volume; charlie's team has its own.
        assert len(import_volumes(docker_engine, commit)) == 2
    finally:
        remove_volumes(docker_engine, commit)


def test_dataset_and_code_caches_are_keyed_by_team_too(alice, bob, charlie):
    from runs.datasets import create_code_snapshot, create_version
    from runs.imports import volumes_for
    from tests.test_reproducible import tar_gz

    keys = {}
    for user in (alice, bob, charlie):
        team = user.teams.get()
        create_version(team, "numbers", tar_gz({"n.txt": b"1 2 3\n"}), "application/gzip", user)
        snapshot, _ = create_code_snapshot(team, tar_gz({"train.py": b"print(1)\n"}), "application/gzip", user)
        spec = {"import": {"/data/": {"dataset": {"name": "numbers", "version": 1}}, "/code/": {"code": {"hash": snapshot.archive.content_hash}}}}
        keys[user.username] = [volume.key for volume in volumes_for(Run(team=team, spec=spec))]
    assert keys["alice"] == keys["bob"]  # one team: one cache
    assert not set(keys["alice"]) & set(keys["charlie"])  # the same bytes in another team: its own


@pytest.mark.parametrize("spellings", [
    ["https://git.example.org/Team/Model.git", "https://GIT.example.org/Team/Model/", "HTTPS://git.example.org/Team/Model.git/"],
    ["git@Git.Example.org:team/model.git", "git@git.example.org:team/model"],
    ["/srv/repos/model", "/srv/repos/model/", "file:///srv/repos/model", "file:///srv/repos/model.git"],
])
def test_one_repository_has_one_spelling(spellings):
    from runs.imports import normalize_git_url

    assert len({normalize_git_url(url) for url in spellings}) == 1


def test_another_path_or_owner_is_another_repository():
    from runs.imports import normalize_git_url

    assert normalize_git_url("https://git.example.org/Team/Model") != normalize_git_url("https://git.example.org/team/model")
    assert normalize_git_url("https://git.example.org/a/model") != normalize_git_url("https://git.example.org/b/model")
