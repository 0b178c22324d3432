"""What every executor does, so the lifecycle code never knows which one it drives."""

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from runs.spec import keeps_alive

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


class LogFrame(NamedTuple):
    """One piece of output as the executor recorded it: usually a whole line with
    its newline, or part of a long line. `cursor` is the position just after it,
    which `follow_logs(cursor=...)` resumes from. (A tuple: a collector makes one
    a line.)"""

    cursor: int
    time: float
    stream: int
    data: bytes


class LineRun(NamedTuple):
    """Many whole lines of one stream that came at one time, each an entry of its own:
    what as many LogFrames would hold, in one piece. `data` is the lines joined, each
    with its newline, none holding a \r; the first line's frame has the cursor
    `first`, and each next one `step` more. A collector takes a million short lines
    this way without a Python object a line (LogWriter.add_frames)."""

    data: bytes
    count: int
    first: int
    step: int
    time: float
    stream: int

    def cursor_of(self, index: int) -> int:
        """The cursor after the line at `index` (0: the first)."""
        return self.first + index * self.step

    def frames(self) -> list[LogFrame]:
        lines = self.data.splitlines(keepends=True)  # at \n alone: there is no \r
        cursors = range(self.first, self.first + len(lines) * self.step, self.step)
        return [LogFrame(cursor, self.time, self.stream, line) for cursor, line in zip(cursors, lines)]


def frames_in(batch: list) -> Iterator[LogFrame]:
    """A batch's frames one by one, a LineRun's each."""
    for item in batch:
        if type(item) is LineRun:
            yield from item.frames()
        else:
            yield item


def log_batches(executor, run, cursor: int) -> Iterator[list[LogFrame | LineRun] | None]:
    """The executor's frames after `cursor` in lists of what was read at once (None
    about once a second while there is nothing new), where a LineRun stands for many:
    its follow_log_batches where it has one, else its follow_logs a frame at a time."""
    batches = getattr(executor, "follow_log_batches", None)
    if batches is not None:
        yield from batches(run, cursor)
        return
    for frame in executor.follow_logs(run, cursor):
        yield None if frame is None else [frame]


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
class ImagePull:
    """Pull the run's image from its registry before it starts, even when the engine has
    it already: with the team's registry credential (`image: {url, credential_name}`), or
    anonymously from a registry some team keeps a credential for. So an image one team
    pulled with its login is never run by another team without one."""

    registry: str
    credential: str = ""  # the credential's name, for messages; "" pulls anonymously
    username: str = ""
    password: str = field(default="", repr=False)

    def auth_config(self) -> dict[str, str]:
        """docker's auth_config. Empty, not None, for an anonymous pull: None would make
        docker-py use a login saved on this host (~/.docker/config.json)."""
        if not self.credential:
            return {}
        return {"username": self.username, "password": self.password, "serveraddress": self.registry}


@dataclass(frozen=True)
class Limits:
    cpus: float
    memory_mb: int
    gpus: int = 0  # honoured where the cluster has GPUs (a Swarm's generic resource `gpu`)


class Executor(Protocol):
    name: str

    def prepare(self, run, pull: ImagePull | None = None) -> str:
        """Check the image is present (pulling it first as `pull` says); return its digest."""

    def start(self, run, env: dict[str, str], limits: Limits, imports: list, pull: ImagePull | None = None) -> str:
        """Start the run's main process (or find it already started), with the
        import volumes (runs.imports.ImportVolume) mounted read-only; return its handle.
        `pull`: the registry login for whatever pulls the image later (a Swarm's nodes)."""

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
        "attach" is the main process itself: its output from now on, typed lines to
        its stdin (AttachedInput), Ctrl-C a SIGINT to it. Closing an attach leaves
        the main process and its stdin open."""

    def open_port(self, run, port: int) -> "PortStream":
        """A connection to `port` on the live run's own loopback (127.0.0.1 inside it),
        as one of its own processes would make it: the run gets no route out for it.
        ExecutorError if the run is not running or the connection cannot be made."""

    # True where the cluster places runs itself (a Swarm): `start` then only hands the
    # run over, and the run waits `pending` until `placement(run) -> Placement` says it
    # runs (runs.engine._await_placement), then `begin(run)` prepares the running
    # container and lets its commands begin; only such an executor has those two.
    places_runs: bool


class Terminal(Protocol):
    """A byte stream to a terminal inside a run; `read` blocks (a thread of its own reads it)."""

    writable: bool

    def read(self) -> bytes:
        """The next output; b"" once the terminal has ended."""

    def write(self, data: bytes) -> bytes:
        """Send keystrokes; returns what to show the one typing (an attach's echo), else b"".
        A terminal may also have `write_now(data) -> int`: send, from an event loop, what
        goes without waiting, and say how many bytes went (write() sends the rest)."""

    def resize(self, cols: int, rows: int) -> None: ...

    def close(self) -> None:
        """End it: the shell gets a hangup, then what is left of it is killed. Its
        processes really end (the shell holds the run's secrets in its environment)."""

    def exit_code(self) -> int | None:
        """Once it has ended (after close): a shell's exit code (128+N for a signal N),
        None for an attach (the main process's is the run's) or where it cannot be told."""


TERMINAL_MODES = ("shell", "attach")


class PortStream(Protocol):
    """A byte stream to a port inside a run (executor.open_port): a TCP connection
    made from inside the run. `read` and `write` block (a thread of their own uses them)."""

    def read(self) -> bytes:
        """The next bytes the run's side sent; b"" once it closed the connection."""

    def write(self, data: bytes) -> None:
        """Send all of `data`; OSError once the connection is gone."""

    def close_write(self) -> None:
        """No more bytes from this side (the run's side reads its end); reading goes on."""

    def close(self) -> None:
        """End the connection; a `read` blocked in another thread returns b"". """

    def failure(self) -> str:
        """Once `read` returned b"": why the connection ended, if it was refused or broke
        ("" when it simply closed)."""


class AttachedInput:
    """Keystrokes for a main process without a terminal of its own (its stdin is a
    pipe, or a terminal with echo off): a line is edited here, echoed to the one
    typing it only (not into the run's log), and sent whole on Enter, so two people
    attached at once never interleave within a line. Ctrl-C interrupts the run
    (what follows it in the same frame is dropped). There is no end of input:
    Ctrl-D is ignored, the run's stdin stays open for the next attach."""

    INTERRUPT, ERASE, KILL_LINE, ESCAPE = 0x03, (0x7F, 0x08), 0x15, 0x1B

    def __init__(self):
        self.line = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """(bytes for the run's stdin, echo for the typist, whether to interrupt)."""
        send, echo = bytearray(), bytearray()
        i = 0
        while i < len(data):
            byte = data[i]
            i += 1
            if byte == self.INTERRUPT:
                self.line.clear()
                return bytes(send), bytes(echo + b"^C\r\n"), True
            if byte in (0x0D, 0x0A):  # Enter (xterm sends a carriage return)
                send += self.line + b"\n"
                echo += b"\r\n"
                self.line.clear()
            elif byte in self.ERASE:
                if self.line:
                    while self.line and self.line[-1] & 0xC0 == 0x80:  # a UTF-8 character's tail
                        self.line.pop()
                    self.line.pop()
                    echo += b"\b \b"
            elif byte == self.KILL_LINE:
                echo += b"\b \b" * len(self.line.decode("utf-8", "replace"))
                self.line.clear()
            elif byte == self.ESCAPE:  # arrow keys and the like: no line editing beyond erase
                if i < len(data) and data[i] in b"[O":
                    i += 1
                    while i < len(data) and not 0x40 <= data[i] <= 0x7E:
                        i += 1
                    i += 1
            elif byte >= 0x20 or byte == 0x09:
                self.line.append(byte)
                echo.append(byte)
        return bytes(send), bytes(echo), False
# In a web terminal shell's environment, with a random value of its own: how its
# processes are told from others' when they must be killed.
TERMINAL_MARKER = "RUNYARD_TERMINAL"
# Bash where the image has it, else sh; a login shell, so the image's profile applies.
SHELL_COMMAND = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]


def wait_step(seconds: float) -> str:
    """A `{wait: 10s}` step: `sleep` where the image has one (coreutils, busybox). An
    image with nothing but /bin/sh has no clock to sleep on, so the shell reads the
    kernel's (/proc/uptime, in hundredths of a second) until the time is up: exact,
    but it keeps one CPU busy while it waits, and says so in the log."""
    shown = f"{seconds:g}s"
    hundredths = round(seconds * 100)
    # "12345.67 890.12" read with IFS=" ." gives 12345 and 67; 1$c - 100 keeps a
    # leading zero (".07") from reading as octal.
    now = "$(( runyard_s * 100 + 1$runyard_c - 100 ))"
    return "\n".join([
        f"if command -v sleep >/dev/null 2>&1; then sleep {seconds:g} || exit $?",
        "elif [ -r /proc/uptime ]; then",
        f"  echo 'runyard: this image has no sleep command: waiting {shown} on the clock, which keeps a CPU busy' >&2",
        f"  IFS=' .' read runyard_s runyard_c runyard_rest < /proc/uptime; runyard_end=$(( {now} + {hundredths} ))",
        f"  while IFS=' .' read runyard_s runyard_c runyard_rest < /proc/uptime; [ {now} -lt $runyard_end ]; do :; done",
        f"else echo 'runyard: cannot wait {shown}: this image has no sleep command and no /proc/uptime' >&2; exit 127",
        "fi",
    ])


def script_for(spec: dict, *, wait_for: str = "") -> str:
    """The run's main script, as its frozen spec says (old specs lack `interactive`);
    `wait_for`: a file under RUNYARD_DIR the commands wait for (see run_script)."""
    interactive = spec.get("interactive") or {}
    return run_script(spec["run"], protect=keeps_alive(spec), jupyter_idle_timeout=interactive.get("jupyter_idle_timeout_seconds"),
                      wait_for=wait_for)


def jupyter_setup(idle_timeout: float) -> list[str]:
    """Script lines for `interactive.jupyter.idle_timeout`: where the image has Jupyter, a
    configuration on JUPYTER_CONFIG_PATH that culls kernels idle that long and shuts the
    server down after that long without activity (Jupyter Server, and the classic
    notebook); else a warning in the run's log. `command -v` is POSIX: busybox sh has it."""
    seconds = max(1, round(idle_timeout))
    kernels = {"cull_idle_timeout": seconds, "cull_interval": min(60, seconds), "cull_connected": False}
    configs = {
        "jupyter_server_config.json": {"ServerApp": {"shutdown_no_activity_timeout": seconds}, "MappingKernelManager": kernels},
        "jupyter_notebook_config.json": {"NotebookApp": {"shutdown_no_activity_timeout": seconds}, "MappingKernelManager": kernels},
    }
    lines = ["if command -v jupyter >/dev/null 2>&1; then", '  mkdir -p "$RUNYARD_DIR/jupyter"']
    for name, config in configs.items():
        lines.append(f'  printf \'%s\\n\' {shlex.quote(json.dumps(config))} > "$RUNYARD_DIR/jupyter/{name}"')
    lines.append('  export JUPYTER_CONFIG_PATH="$RUNYARD_DIR/jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"')
    lines.append("else")
    lines.append(f"  echo {shlex.quote(JUPYTER_MISSING)} >&2")
    lines.append("fi")
    return lines


JUPYTER_MISSING = "runyard: Jupyter was not found in the image; jupyter.idle_timeout is ignored"


def run_script(commands: list[dict], *, protect: bool, jupyter_idle_timeout: float | None = None, wait_for: str = "") -> str:
    """The POSIX shell script every run executes as its main process.

    Commands run in order in one shell and the first failure ends the run; a wait
    step (`{"wait_seconds": 10.0}`) pauses between them (wait_step). The
    main command's exit code lands in $RUNYARD_DIR/exit_code; with termination
    protection the script then waits (the container stays usable) until stopped.

    SIGTERM and SIGINT are sent to the script's whole process group (in a container
    docker-init does it, TINI_KILL_PROCESS_GROUP; a local run's supervisor signals
    its group), so the user's commands get the very signal, and Ctrl-C in an
    attached terminal reaches a Python training loop as KeyboardInterrupt. The
    commands run in the foreground: a background list would start with SIGINT
    ignored and its stdin from /dev/null, deaf to an attach.

    `wait_for` (a file in $RUNYARD_DIR): the commands begin once it exists, for an
    executor that prepares the running container from outside first (a Swarm's).
    """
    lines = ['mkdir -p "$RUNYARD_DIR" 2>/dev/null', 'home_dir=$(pwd)']
    if jupyter_idle_timeout is not None:
        lines += jupyter_setup(jupyter_idle_timeout)
    if wait_for:
        # `sleep` where the image has it; an image with only sh spins (a second or so).
        lines.append('if command -v sleep >/dev/null 2>&1; then nap="sleep 0.1"; else nap=":"; fi')
        lines.append(f'until [ -e "$RUNYARD_DIR/{wait_for}" ]; do $nap; done')
    # Survive the signal to record the exit code. (A handler, not '': an ignored
    # signal would stay ignored in the commands too.)
    # A stop (SIGTERM) while the commands run is remembered: the run then ends with
    # them, never waits idle for a second SIGTERM that will not come.
    lines.append("trap 'runyard_stopped=1' TERM")
    lines.append("trap : INT")
    lines.append("(")
    # The signal ends the commands' shell, but only once the command it waits for has
    # ended: a program that cleans up on SIGINT or SIGTERM gets to finish doing so.
    lines.append("trap 'exit 130' INT")
    lines.append("trap 'exit 143' TERM")
    for command in commands:
        if "wait_seconds" in command:
            lines.append(wait_step(command["wait_seconds"]))
            continue
        lines.append(f"cd {shlex.quote(command['workdir'])} || exit $?" if command.get("workdir") else 'cd "$home_dir"')
        lines.append("{\n" + command["command"] + "\n} || exit $?")
    lines.append(")")
    lines.append("code=$?")
    lines.append('echo $code > "$RUNYARD_DIR/exit_code"')
    if protect:
        # Idle: nothing reads the keyboard any more; only a stop (SIGTERM) ends the wait.
        lines.append("trap '' INT")
        # Wait with no program but the shell (an image may have only /bin/sh): `sleep`
        # where there is one, else a shell that stops itself. A SIGTERM ends the wait
        # either way (the trap above), and the script with it.
        lines.append('if [ -z "$runyard_stopped" ]; then')
        lines.append("  if command -v sleep >/dev/null 2>&1; then sleep 2147483647 & else sh -c 'kill -STOP $$' & fi")
        lines.append("  wait $!")
        lines.append("fi")
    lines.append("exit $code")
    return "\n".join(lines) + "\n"
