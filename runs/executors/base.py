"""What every executor does, so the lifecycle code never knows which one it drives."""

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

STDOUT, STDERR = 0, 1

# `import runyard` inside a run (SPEC §4): this one stdlib-only file, put on PYTHONPATH.
REPORTER_FILE = Path(__file__).resolve().parent.parent / "inrun" / "runyard.py"


def with_reporter(env: dict[str, str], directory: str) -> dict[str, str]:
    """The run's environment with the reporter's directory after the user's PYTHONPATH."""
    own = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": f"{own}:{directory}" if own else directory}


class ExecutorError(Exception):
    """A failure a user should read: its message becomes the run's status reason."""

    retry = False  # a passing trouble (a cluster's manager away): decide nothing, try again later


@dataclass(frozen=True)
class Placement:
    """Where a run stands on a cluster that places runs itself (a Swarm): `waiting` for
    room, `initializing` (on a node, not started yet), `running`, `ended`, or `gone`
    (nothing of it is on the cluster)."""

    state: str
    node: str = ""
    reason: str = ""
    ran: bool = False  # it ended after its main process started: its log and exit code are kept


@dataclass(frozen=True)
class LogFrame:
    """One piece of output as the executor recorded it: usually a whole line with
    its newline, or part of a long line. `cursor` is the position just after it,
    which `follow_logs(cursor=...)` resumes from."""

    cursor: int
    time: float
    stream: int
    data: bytes


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int | None
    reason: str  # "" for a plain exit, else why it ended ("killed: out of memory")


@dataclass(frozen=True)
class Sample:
    """What a live run uses, read once: `cpu_seconds` is the CPU time all its processes
    have used so far (every CPU counted), `at` the unix time of the reading, on the
    clock of whatever read it; two readings give the CPU % between them
    (runs.system_metrics), as `docker stats` does from its own two."""

    at: float
    cpu_seconds: float
    memory_mib: float


@dataclass(frozen=True)
class Limits:
    cpus: float
    memory_mb: int
    gpus: int = 0  # honoured where the cluster has GPUs (a Swarm's generic resource `gpu`)


class Executor(Protocol):
    name: str

    def prepare(self, run) -> str:
        """Check the image is present; return its digest."""

    def start(self, run, env: dict[str, str], limits: Limits, imports: list) -> str:
        """Start the run's main process (or find it already started), with the
        import volumes (runs.imports.ImportVolume) mounted read-only; return its handle."""

    def read_export(self, run, path: str):
        """A tar stream (a binary file object) of what is at `path` in the run, or None if nothing is."""

    def follow_logs(self, run, cursor: int) -> Iterator[LogFrame | None]:
        """Frames after `cursor`, following until the run's container ends.
        Yields None about once a second while there is nothing new."""

    def main_exit_code(self, run) -> int | None:
        """The main command's exit code once it ended, even if the container lives on (idle)."""

    def exit_info(self, run) -> ExitInfo:
        """How the container ended."""

    def exists(self, run) -> bool: ...

    def sample(self, run) -> Sample | None:
        """What the live run uses now, read without waiting; None if it cannot be told
        (not running, its engine away)."""

    def stop(self, run, grace: float) -> None:
        """SIGTERM, up to `grace` seconds, then SIGKILL."""

    def remove(self, run) -> None: ...

    def live_run_ids(self) -> set[int]:
        """Runs of this installation that still have a container or process."""

    def open_terminal(self, run, mode: str, cols: int, rows: int) -> "Terminal":
        """A terminal in the live run: "shell" starts a new shell with a TTY in it;
        "attach" follows the main process's output (read-only)."""

    # An executor whose cluster places runs itself sets `places_runs = True`: `start`
    # then only hands the run over, and the run waits `pending` until `placement(run)`
    # says it runs (runs.engine._await_placement).
    # def placement(self, run) -> Placement: ...


class Terminal(Protocol):
    """A byte stream to a terminal inside a run; `read` blocks (a thread of its own reads it)."""

    writable: bool

    def read(self) -> bytes:
        """The next output; b"" once the terminal has ended."""

    def write(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def close(self) -> None:
        """End it: the shell gets a hangup, then what is left of it is killed. Its
        processes really end (the shell holds the run's secrets in its environment)."""


TERMINAL_MODES = ("shell", "attach")
# In a web terminal shell's environment, with a random value of its own: how its
# processes are told from others' when they must be killed.
TERMINAL_MARKER = "RUNYARD_TERMINAL"
# Bash where the image has it, else sh; a login shell, so the image's profile applies.
SHELL_COMMAND = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]


def run_script(commands: list[dict], *, protect: bool, forward_signals: bool) -> str:
    """The POSIX shell script every run executes as its main process.

    Commands run in order in one shell and the first failure ends the run. The
    main command's exit code lands in $RUNYARD_DIR/exit_code; with termination
    protection the script then waits (the container stays usable) until stopped.
    Inside a container the script forwards SIGTERM to every process there.
    """
    lines = ['mkdir -p "$RUNYARD_DIR" 2>/dev/null', 'home_dir=$(pwd)']
    if forward_signals:
        # Our own PID namespace: -1 is every process in the container but init and us.
        # (CONT too: the waiter below is stopped, and a stopped process ends on SIGKILL only.)
        lines.append("trap 'kill -TERM -1 2>/dev/null; kill -CONT -1 2>/dev/null' TERM INT")
    else:
        # The signal reaches the whole process group already; survive it to record the exit code.
        # (A handler, not '' : an ignored signal would stay ignored in the commands too.)
        lines.append("trap : TERM INT")
    lines.append("(")
    for command in commands:
        lines.append(f"cd {shlex.quote(command['workdir'])} || exit $?" if command.get("workdir") else 'cd "$home_dir"')
        lines.append("{\n" + command["command"] + "\n} || exit $?")
    lines.append(") &")
    lines.append("child=$!")
    # `wait` returns early when a trapped signal arrives: wait again until the child is gone.
    lines.append("while :; do wait $child; code=$?; kill -0 $child 2>/dev/null || break; done")
    lines.append('echo $code > "$RUNYARD_DIR/exit_code"')
    if protect:
        # Wait for ever with no program but the shell (an image may have only /bin/sh):
        # `sleep` where there is one, else a shell that stops itself.
        lines.append("if command -v sleep >/dev/null 2>&1; then sleep 2147483647 & else sh -c 'kill -STOP $$' & fi")
        lines.append("wait $!")
    lines.append("exit $code")
    return "\n".join(lines) + "\n"
