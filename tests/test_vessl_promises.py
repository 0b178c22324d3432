"""Promises a run file makes that used to be broken (issue 9): termination protection
in an image with nothing but /bin/sh, export folders that exist before the first
command, and `make run` stopping on Ctrl-C with its live runs picked up at the next
start. Real engines, real processes."""

import time

import pytest

from runs.executors import executor_for
from runs.models import RunFile
from runs.services import terminate_run
from tests.conftest import EXECUTORS, use_executor, wait_for
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


def test_an_image_user_who_is_not_root_can_write_the_export_folder(alice, engine, docker_engine, sh_only):
    image = "runyard/sh-only-user:latest"
    container = docker_engine.containers.create(SH_ONLY, ["/bin/sh"])
    try:
        container.commit(image, conf={"User": "1000:1000"})
    finally:
        container.remove()
    run = launch(alice, "docker", "echo 4 > /output/result.txt", image=image, export={"/output/": "volume://outputs"})
    run = wait_for(run.pk, {"completed", "failed"}, timeout=90, removed=True)
    assert run.status == "completed", run.status_reason
    assert list(RunFile.objects.filter(run=run).values_list("path", flat=True)) == ["/output/result.txt"]
