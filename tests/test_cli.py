"""The `runyard` command as a user runs it: a real subprocess talking HTTP to a live
Daphne on the test database, with the real Celery worker and Docker engine behind it."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
import zipfile

import pytest
import yaml

from runs.models import Run
from tests.conftest import BUSYBOX, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli(console_url, alice, engine, docker_engine, tmp_path):
    """`runyard ...` as alice: returns the finished process (text stdout and stderr)."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args, token=None, url=None, timeout=60, extra_env=None):
        env = {**os.environ, "HOME": str(home), "RUNYARD_URL": url or console_url, "RUNYARD_TOKEN": token or alice.token}
        env.update(extra_env or {})
        for name, value in list(env.items()):
            if value is None:
                del env[name]
        return subprocess.run(
            [sys.executable, "-m", "runyard", *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=timeout,
        )

    return run


def write_spec(tmp_path, *commands, name="cli-test", **extra) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "image": BUSYBOX, "run": [{"command": c} for c in commands], **extra}))
    return str(path)


def created_id(result) -> int:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def assert_clean_error(result, starts: str):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: " + starts), result.stderr


def test_it_follows_a_run_that_completes_and_exits_0(cli, tmp_path):
    spec = write_spec(tmp_path, "echo hello from $RUNYARD_RUN_ID", "echo '#runyard progress=0.5 loss=1'", "echo second step")
    result = cli("run", "create", "-f", spec, "--follow")
    assert result.returncode == 0, result.stderr
    run_id = Run.objects.get().pk
    assert result.stdout == f"hello from {run_id}\nsecond step\n"
    assert result.stderr.splitlines()[-1] == f"run {run_id} completed (exit code 0)"

    listed = cli("run", "list", "--status", "completed", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == [run_id]
    assert json.loads(cli("run", "list", "--status", "failed", "--json").stdout)["items"] == []

    table = cli("run", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "NAME", "OWNER", "CREATED"]
    assert table[1].split()[:4] == [str(run_id), "completed", "cli-test", "alice"]
    shown = cli("run", "show", str(run_id)).stdout
    assert "status:          completed (exit code 0)" in shown
    assert "progress:        50%" in shown  # reported from inside, and not a log line above


def test_it_follows_a_run_that_fails_and_exits_non_zero(cli, tmp_path):
    result = cli("run", "create", "-f", write_spec(tmp_path, "echo about to fail", "exit 3"), "--follow")
    assert result.returncode == 1
    run_id = Run.objects.get().pk
    assert result.stdout == "about to fail\n"
    assert result.stderr.splitlines()[-1] == f"run {run_id} failed: exit code 3"


def test_logs_follow_prints_every_line_once(cli, tmp_path):
    # Enough lines, slowly enough, that the follower reads them over many polls.
    script = "i=1; while [ $i -le 2000 ]; do echo $i; [ $((i % 100)) -eq 0 ] && sleep 0.1; i=$((i+1)); done"
    run_id = created_id(cli("run", "create", "-f", write_spec(tmp_path, script), "--json"))
    followed = cli("run", "logs", str(run_id), "-f")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [str(i) for i in range(1, 2001)]

    whole = cli("run", "logs", str(run_id))
    assert whole.stdout == followed.stdout
    tail = cli("run", "logs", str(run_id), "--tail", "3")
    assert tail.stdout.splitlines() == ["1998", "1999", "2000"]


def test_terminate_waits_until_the_container_is_gone(cli, tmp_path):
    spec = write_spec(tmp_path, "trap 'echo caught SIGTERM; exit 0' TERM; echo started; while :; do sleep 0.1; done")
    run_id = created_id(cli("run", "create", "-f", spec, "--json"))
    deadline = time.monotonic() + 30
    while cli("run", "logs", str(run_id)).stdout != "started\n":
        assert time.monotonic() < deadline, "the run never printed 'started'"
        time.sleep(0.2)
    result = cli("run", "terminate", str(run_id), "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"run {run_id} terminated")
    run = Run.objects.get(pk=run_id)
    assert run.status == "terminated" and run.container_removed_at is not None
    # What it printed after the SIGTERM is kept (busybox's shell may also report "Terminated" for its sleep).
    lines = cli("run", "logs", str(run_id)).stdout.splitlines()
    assert lines[0] == "started" and "caught SIGTERM" in lines

    again = cli("run", "terminate", str(run_id))
    assert_clean_error(again, "")
    assert len(again.stderr.splitlines()) == 1


def test_reproduce_with_env_follows_the_new_run(cli, tmp_path):
    spec = write_spec(tmp_path, "echo greeting=$GREETING", env={"GREETING": "hello"})
    first = cli("run", "create", "-f", spec, "--follow")
    assert (first.returncode, first.stdout) == (0, "greeting=hello\n"), first.stderr
    original = Run.objects.get()
    result = cli("run", "reproduce", str(original.pk), "--env", "GREETING=bye", "--follow")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "greeting=bye\n"
    assert Run.objects.exclude(pk=original.pk).get().reproduced_from_id == original.pk


def test_create_with_code_uploads_the_directory(cli, tmp_path):
    code = tmp_path / "project"
    (code / "pkg").mkdir(parents=True)
    (code / "hello.txt").write_text("hello from the uploaded code\n")
    (code / "pkg" / "data.txt").write_text("nested\n")
    (code / ".git").mkdir()
    (code / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    spec = write_spec(tmp_path, "cat /code/hello.txt /code/pkg/data.txt", "ls -A /code")
    result = cli("run", "create", "-f", spec, "--code", str(code), "--follow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello from the uploaded code", "nested", "hello.txt", "pkg"]
    assert "uploaded 2 files" in result.stderr

    missing = cli("run", "create", "-f", spec, "--code", str(tmp_path / "nowhere"))
    assert_clean_error(missing, "--code")


def test_dataset_create_and_list(cli, tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    (data / "train.csv").write_text("x,y\n1,2\n")
    (data / "test.csv").write_text("x,y\n3,4\n")
    first = cli("dataset", "create", "mnist", str(data))
    assert first.returncode == 0, first.stderr
    assert "version 1" in first.stdout
    same = cli("dataset", "create", "mnist", str(data))
    assert same.returncode == 0, same.stderr
    assert "unchanged" in same.stdout and "version 1" in same.stdout

    archive = tmp_path / "mnist.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.csv", "x,y\n5,6\n")
    created = cli("dataset", "create", "mnist", str(archive), "--json")
    assert json.loads(created.stdout)["version"] == 2

    listed = cli("dataset", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (mnist,) = json.loads(listed.stdout)["items"]
    assert (mnist["name"], mnist["latest_version"]) == ("mnist", 2)
    assert [v["file_count"] for v in mnist["versions"]] == [2, 1]
    assert cli("dataset", "list").stdout.splitlines()[1].split()[:4] == ["mnist", "2", "2", "1"]


def test_a_wrong_token_is_one_clear_line(cli):
    result = cli("run", "list", token="not-a-token")
    assert_clean_error(result, "invalid or revoked token")
    assert len(result.stderr.splitlines()) == 1


def test_spec_errors_name_the_field(cli, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "image": BUSYBOX, "run": [{"command": "true", "workdir": 3}]}))
    result = cli("run", "create", "-f", str(spec))
    assert_clean_error(result, "the run spec is not valid")
    assert "run[0].workdir: expected a string" in result.stderr


def test_a_server_that_is_down_is_one_clear_line(cli):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("run", "list", url=url)
    assert_clean_error(result, f"cannot reach Runyard at {url}")
    assert len(result.stderr.splitlines()) == 1


def test_login_saves_the_url_and_token(cli, console_url, alice, tmp_path):
    # Without the environment, the command uses what login saved in $HOME.
    env = {"RUNYARD_URL": None, "RUNYARD_TOKEN": None}
    assert_clean_error(cli("login", "--url", console_url, "--token", "wrong", extra_env=env), "invalid or revoked token")
    result = cli("login", "--url", console_url + "/api/v1/", "--token", alice.token, extra_env=env)
    assert result.returncode == 0, result.stderr
    saved = tmp_path / "home" / ".config" / "runyard" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"url": console_url, "token": alice.token}
    listed = cli("run", "list", "--json", extra_env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == []


def test_it_needs_only_the_standard_library():
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); import runyard.cli; "
        "extra = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {'runyard'}; "
        "print(sorted(extra))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_welcome_gives_the_first_admin_the_default_team(db, defaults, settings, tmp_path):
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from runs.models import Membership

    settings.VAR_DIR = tmp_path
    call_command("welcome", stdout=StringIO())
    admin = get_user_model().objects.get(username="admin")
    assert list(Membership.objects.filter(user=admin).values_list("team__name", "role")) == [("default", "admin")]
    call_command("welcome", stdout=StringIO())
    assert Membership.objects.count() == 1
