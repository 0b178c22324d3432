"""Promises a run file makes that used to be broken (issue 9): termination protection
in an image with nothing but /bin/sh, export folders that exist before the first
command, and `make run` stopping on Ctrl-C with its live runs picked up at the next
start. Real engines, real processes."""

import time

import pytest

from runs.executors import executor_for
from runs.models import RunFile
from runs.services import terminate_run
from tests.conftest import EXECUTORS, use_executor, wait_for, wait_until
from tests.test_engine import launch, log_texts, statuses

SH_ONLY = "runyard/sh-only:latest"  # nothing but /bin/sh: no cat, no sleep, no mkdir (images/build.sh)


@pytest.fixture(params=EXECUTORS)
def executor(request, engine):
    return use_executor(request)


@pytest.fixture
def sh_only(docker_engine):
    import subprocess

    from django.conf import settings

    subprocess.run([str(settings.BASE_DIR / "images" / "build.sh"), SH_ONLY], check=True, stdout=subprocess.DEVNULL)
    return SH_ONLY


def shell_says(terminal, command: bytes, expected: bytes, timeout: float = 30) -> None:
    terminal.write(command)
    seen = b""
    deadline = time.monotonic() + timeout
    while expected not in seen:
        assert time.monotonic() < deadline, f"the shell never printed {expected!r}; it printed {seen!r}"
        chunk = terminal.read()
        assert chunk, f"the shell ended; it printed {seen!r}"
        seen += chunk


def test_termination_protection_reaches_idle_in_an_image_with_only_sh(alice, executor, sh_only):
    # The local executor has no images: there it is the host's shell, the same script.
    run = launch(alice, executor, "echo work done", "exit 3", termination_protection=True, image=sh_only)
    run = wait_for(run.pk, "idle", timeout=90)
    assert run.exit_code == 3
    assert log_texts(run) == ["work done"]
    terminal = executor_for(run).open_terminal(run, "shell", 80, 24)
    try:
        shell_says(terminal, b"echo $((6 * 7))\n", b"42")
    finally:
        terminal.close()
    terminate_run(run, actor=alice)
    run = wait_for(run.pk, "terminated", timeout=60, removed=True)
    assert statuses(run) == ["pending", "initializing", "running", "idle", "terminated"]
    assert run.exit_code == 3


@pytest.mark.parametrize("executor", ["docker", "swarm"], indirect=True)
@pytest.mark.parametrize("image", ["runyard/busybox:latest", SH_ONLY])
def test_export_folders_exist_before_the_first_command(alice, executor, image, sh_only):
    # No mkdir: the folder is there, empty, and the command's shell writes into it.
    run = launch(alice, executor, "for f in /output/*; do echo found $f; done", "echo 42 > /output/result.txt",
                 image=image, export={"/output/": "volume://outputs"})
    run = wait_for(run.pk, {"completed", "failed"}, timeout=90, removed=True)
    assert run.status == "completed", run.status_reason
    assert log_texts(run) == ["found /output/*"]  # it was empty
    assert list(RunFile.objects.filter(run=run).values_list("path", "size")) == [("/output/result.txt", 3)]


@pytest.mark.parametrize("executor", ["docker", "swarm"], indirect=True)
def test_an_image_user_who_is_not_root_can_write_the_export_folders(request, alice, executor, docker_engine, sh_only):
    # An image whose USER is not root, with none of the export folders in it: nothing
    # but /bin/sh, so no command of the run could fix their owner or mode either.
    image = "runyard/sh-only-user:latest"
    container = docker_engine.containers.create(SH_ONLY, ["/bin/sh"])
    try:
        container.commit(image, conf={"User": "1000:1000"})
    finally:
        container.remove()
    if executor == "swarm":
        import subprocess

        from django.conf import settings

        lab = request.getfixturevalue("swarm_lab")
        subprocess.run([str(settings.BASE_DIR / "images" / "build.sh"), "--push", lab.registry, "--engine", lab.manager, image],
                       check=True, stdout=subprocess.DEVNULL)
    exports = {"/output/": "volume://outputs", "/checkpoints/deep/": "volume://checkpoints"}
    run = launch(alice, executor, "for f in /output/* /checkpoints/deep/*; do echo found $f; done",
                 "echo 4 > /output/result.txt", "echo 5 > /checkpoints/deep/step-1.ckpt", image=image, export=exports)
    run = wait_for(run.pk, {"completed", "failed"}, timeout=90, removed=True)
    assert run.status == "completed", (run.status_reason, log_texts(run))
    assert log_texts(run) == ["found /output/*", "found /checkpoints/deep/*"]  # both there, and empty
    assert sorted(RunFile.objects.filter(run=run).values_list("path", flat=True)) == ["/checkpoints/deep/step-1.ckpt", "/output/result.txt"]


# -- make run stops on Ctrl-C ----------------------------------------------------------


def embedded_env(var_dir, port: int) -> dict:
    """`make run`'s environment: the embedded default (no DATABASE_URL, no REDIS_URL),
    its data in a folder of its own; short leases and reconciles keep the test quick."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    return {**env, "RUNYARD_VAR_DIR": str(var_dir), "PORT": str(port), "SECRET_KEY": "runyard-tests-only",
            "RUNYARD_COLLECTOR_LEASE_SECONDS": "5", "RUNYARD_RECONCILE_SECONDS": "2"}


def start_console(env: dict, port: int, log_file):
    """Daphne as `make run` starts it from a terminal, in a process group of its own (Ctrl-C
    signals the group). With SIGINT at its default, as in a terminal's foreground: a test
    run started in the background (`nohup ... &`) hands its children SIGINT ignored, and a
    console started so never hears Ctrl-C (two CI runs of this stop failed on that)."""
    import subprocess
    import sys
    from pathlib import Path

    from django.conf import settings

    daphne = Path(sys.executable).parent / "daphne"
    command = [str(daphne), "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"]
    as_in_a_terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", as_in_a_terminal, *command],
                            cwd=settings.BASE_DIR, env=env, stdout=log_file, stderr=log_file, process_group=0)


def test_make_run_stops_on_ctrl_c_and_picks_its_live_run_up_again(tmp_path, docker_engine):
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from django.conf import settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = embedded_env(tmp_path / "var", port)
    instance = f"ctrlc-{os.getpid()}"
    env["RUNYARD_INSTANCE_ID"] = instance  # its containers, told from other consoles' on this engine
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True)
    token = subprocess.run([*manage, "createtoken", "ctrl-c"], env=env, check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    base = f"http://127.0.0.1:{port}/api/v1"

    def api(path: str, body: bytes | None = None):
        request = urllib.request.Request(base + path, data=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/yaml"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def api_up() -> bool:
        try:
            return json.loads(api("/health"))["status"] == "ok"
        except OSError:
            return False

    log_file = open(tmp_path / "console.log", "ab")
    console = start_console(env, port, log_file)
    try:
        wait_until(api_up, 60, "the console answers")
        lines = 12
        run = json.loads(api("/runs", f"name: ctrl-c\nimage: runyard/busybox:latest\nrun:\n"
                                      f"  - command: for i in $(seq {lines}); do echo line $i; sleep 1; done\n".encode()))
        wait_until(lambda: b"line 2" in api(f"/runs/{run['id']}/logs.txt"), 60, "the run's output arrives")

        os.killpg(console.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        try:
            console.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("`make run` was still up 10 s after Ctrl-C")

        console = start_console(env, port, log_file)
        wait_until(api_up, 60, "the console answers again")
        wait_until(lambda: json.loads(api(f"/runs/{run['id']}"))["status"] in ("completed", "failed", "terminated"),
                   90, "the run ends")
        assert json.loads(api(f"/runs/{run['id']}"))["status"] == "completed"
        assert api(f"/runs/{run['id']}/logs.txt").decode().splitlines() == [f"line {i}" for i in range(1, lines + 1)]
    finally:
        if console.poll() is None:
            os.killpg(console.pid, signal.SIGKILL)
            console.wait()
        log_file.close()
        for container in docker_engine.containers.list(all=True, filters={"label": f"runyard.instance={instance}"}):
            container.remove(force=True, v=True)
