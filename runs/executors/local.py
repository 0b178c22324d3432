"""Runs as local processes, for machines without a Docker engine (embedded default).

Each run gets a directory under var/local-runs/<instance>/<run id>/ and a detached
supervisor (runs.executors.local_supervisor) that owns its PTY and process group.
No isolation beyond that: the processes run as the console's own user.

A run's directory holds its secrets (env.json) and its raw output: it and the
folders above it are 0700, the files Runyard writes there 0600.
"""

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from runs.executors.base import (
    REPORTER_FILE, SHELL_COMMAND, TERMINAL_MARKER, AttachedInput, ExecutorError, ExitInfo, Limits, LogFrame, Sample,
    script_for, with_reporter,
)
from runs.executors.terminal_processes import kill_terminal_processes
from runs.private_files import open_private_for_append, private_dir, write_private


class LocalExecutor:
    name = "local"
    places_runs = False  # it starts a run itself (a Swarm places its runs: runs.engine)

    def __init__(self, instance_id: str):
        self.instance_id = instance_id
        self.root = Path(settings.RUNYARD_LOCAL_RUNS_DIR) / instance_id

    def run_dir(self, run) -> Path:
        return self.root / str(run.pk)

    def prepare(self, run, pull=None) -> str:
        # No images here: the run uses this machine's own shell and tools.
        return "local"

    def start(self, run, env: dict[str, str], limits: Limits, imports: list, pull=None) -> str:
        if imports or run.spec.get("export"):
            # A local process has no filesystem of its own to mount /code or /data in.
            raise ExecutorError("import and export volumes need the Docker executor; this run would use local processes")
        run_dir = self.run_dir(run)
        if (run_dir / "supervisor.pid").exists():
            return str(run_dir)
        for folder in (self.root.parent, self.root, run_dir, run_dir / "runyard"):
            private_dir(folder)
        script = script_for(run.spec)
        write_private(run_dir / "script.sh", script)
        base_env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        full_env = {**base_env, "HOME": str(run_dir / "work"), **with_reporter(env, str(REPORTER_FILE.parent)),
                    "RUNYARD_DIR": str(run_dir / "runyard")}
        write_private(run_dir / "env.json", json.dumps(full_env))
        try:
            with open_private_for_append(run_dir / "supervisor.log") as errors:
                supervisor = subprocess.Popen(
                    [sys.executable, "-m", "runs.executors.local_supervisor", str(run_dir)],
                    cwd=settings.BASE_DIR,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,  # survives the worker that started it
                )
        except OSError as exc:
            raise ExecutorError(f"could not start the local process: {exc}") from None
        write_private(run_dir / "supervisor.pid", str(supervisor.pid))
        return str(run_dir)

    def read_export(self, run, path: str):
        return None  # start() refuses runs with exports

    def follow_logs(self, run, cursor: int) -> Iterator[LogFrame | None]:
        path = self.run_dir(run) / "output.jsonl"
        ended = self.run_dir(run) / "ended"
        last_yield = time.monotonic()
        deadline_for_output = time.monotonic() + 30
        while not path.exists():
            if ended.exists() or not self.run_dir(run).exists():
                return
            if time.monotonic() > deadline_for_output and not self._supervisor_alive(run):
                raise ExecutorError("local process disappeared")
            time.sleep(0.1)
        with open(path, "rb") as f:
            f.seek(cursor)
            position = cursor
            while True:
                line = f.readline()
                if line.endswith(b"\n"):
                    position += len(line)
                    t, stream, text = json.loads(line)
                    yield LogFrame(cursor=position, time=t, stream=stream, data=text.encode("utf-8", "surrogateescape"))
                    continue
                f.seek(position)  # a record half-written: read it again whole
                was_ended = ended.exists()
                if was_ended and f.read(1) == b"":
                    return
                f.seek(position)
                if not was_ended and not self._supervisor_alive(run):
                    raise ExecutorError("local process disappeared")
                if time.monotonic() - last_yield >= 1.0:
                    last_yield = time.monotonic()
                    yield None
                time.sleep(0.05)

    def _supervisor_alive(self, run) -> bool:
        try:
            pid = int((self.run_dir(run) / "supervisor.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        try:  # a zombie left by the worker that started it is not alive
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    def main_exit_code(self, run) -> int | None:
        try:
            return int((self.run_dir(run) / "runyard" / "exit_code").read_text().strip())
        except (OSError, ValueError):
            return None

    def exit_info(self, run) -> ExitInfo:
        try:
            return ExitInfo(int((self.run_dir(run) / "ended").read_text()), "")
        except FileNotFoundError:
            if self.run_dir(run).exists():
                return ExitInfo(None, "still running")
            return ExitInfo(None, "local process disappeared")

    def exists(self, run) -> bool:
        return self.run_dir(run).exists()

    def _pgid(self, run) -> int | None:
        try:
            return int((self.run_dir(run) / "pgid").read_text())
        except (OSError, ValueError):
            return None

    def sample(self, run) -> Sample | None:
        """The run's processes, from /proc (Linux; elsewhere nothing is read)."""
        pgid = self._pgid(run)
        if pgid is None or (self.run_dir(run) / "ended").exists():
            return None
        return session_sample(pgid)  # its main process leads a session of its own

    def stop(self, run, grace: float) -> None:
        run_dir = self.run_dir(run)
        if not run_dir.exists() or (run_dir / "ended").exists():
            return
        pgid = self._pgid(run)
        if pgid is None:  # the supervisor has not started its child yet
            deadline = time.monotonic() + 5
            while pgid is None and time.monotonic() < deadline and self._supervisor_alive(run):
                time.sleep(0.05)
                pgid = self._pgid(run)
        if pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not (run_dir / "ended").exists():
                time.sleep(0.05)
            _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (run_dir / "ended").exists() and self._supervisor_alive(run):
            time.sleep(0.05)

    def remove(self, run) -> None:
        run_dir = self.run_dir(run)
        if not run_dir.exists():
            return
        if not (run_dir / "ended").exists():
            self.stop(run, 0)
        try:
            pid = int((run_dir / "supervisor.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        _kill_terminals(run_dir / "terminals")
        shutil.rmtree(run_dir, ignore_errors=True)

    def live_run_ids(self) -> set[int]:
        if not self.root.exists():
            return set()
        return {int(p.name) for p in self.root.iterdir() if p.name.isdigit()}

    def open_terminal(self, run, mode: str, cols: int, rows: int) -> "LocalTerminal | LocalAttach":
        run_dir = self.run_dir(run)
        if not self._supervisor_alive(run):
            raise ExecutorError("the run's process is not running")
        if mode == "attach":
            # A run just started: its supervisor may still be setting up its input and output.
            deadline = time.monotonic() + 5
            while not (run_dir / "output.jsonl").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not (run_dir / "stdin").exists() or not (run_dir / "output.jsonl").exists():
                raise ExecutorError("this run was started without an input to attach to: open a new shell instead")
            return LocalAttach(run_dir, self._pgid(run))
        try:
            env = json.loads((run_dir / "env.json").read_text())
        except (OSError, ValueError):
            raise ExecutorError("the run's environment is missing") from None
        home = run_dir / "work"
        home.mkdir(parents=True, exist_ok=True)
        return LocalTerminal([*SHELL_COMMAND], cwd=home, env={**env, "TERM": "xterm-256color"}, cols=cols, rows=rows,
                             records=run_dir / "terminals")


    def open_port(self, run, port: int) -> "LocalPortStream":
        """A plain TCP connection to the port on this machine: a local run shares its network."""
        if not self._supervisor_alive(run) or (self.run_dir(run) / "ended").exists():
            raise ExecutorError("the run's process is not running")
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as exc:
            raise ExecutorError(f"nothing answers on port {port} in the run ({exc.strerror or exc})") from None
        connection.settimeout(None)
        return LocalPortStream(connection)


class LocalPortStream:
    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.broke = ""

    def read(self) -> bytes:
        try:
            return self.connection.recv(65536)
        except OSError as exc:
            self.broke = exc.strerror or str(exc)
            return b""

    def write(self, data: bytes) -> None:
        self.connection.sendall(data)

    def close_write(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()

    def failure(self) -> str:
        return self.broke


def session_sample(sid: int) -> Sample | None:
    """CPU time and resident memory of a session's processes, summed: the session, not
    the process group, as a program may put its children in a group of their own
    (`timeout` does). CPU time counts what each has used and what its ended children
    did (reaped, they are no longer listed); memory shared between them (the shell's
    libraries) counts once each."""
    try:
        ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except (OSError, ValueError):
        return None
    at = time.time()
    cpu_ticks = rss_pages = members = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # After the command name, which may hold spaces and parentheses: field 3 on.
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended meanwhile
        if int(fields[3]) != sid:  # field 6, session
            continue
        members += 1
        cpu_ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        rss_pages += int(fields[21])  # rss
    if not members:
        return None
    return Sample(at=at, cpu_seconds=cpu_ticks / ticks, memory_mib=rss_pages * page / (1 << 20))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_terminals(records: Path) -> None:
    """The run has ended: so have its web terminal shells and what they started,
    whichever process opened them (each is a session of its own, out of reach of
    the run's process group)."""
    if not records.is_dir():
        return
    for record in records.iterdir():
        try:
            kill_terminal_processes(record.read_text(), int(record.name))
        except (OSError, ValueError):
            pass
        record.unlink(missing_ok=True)


class LocalAttach:
    """The main process itself: what it prints from now on (read from the output its
    supervisor records), typed lines to its PTY through the supervisor's FIFO, and
    Ctrl-C a SIGINT to its process group. Closing it leaves the run alone."""

    writable = True

    def __init__(self, run_dir: Path, pgid: int | None):
        self.run_dir, self.pgid = run_dir, pgid
        self.keyboard = AttachedInput()
        self.output = open(run_dir / "output.jsonl", "rb")
        self.output.seek(0, os.SEEK_END)
        self.closed = threading.Event()

    def read(self) -> bytes:
        """The next records (whole lines: a prompt without a newline shows once its line ends)."""
        while not self.closed.is_set():
            position = self.output.tell()
            records = self.output.read(65536)
            whole = records[:records.rfind(b"\n") + 1]
            self.output.seek(position + len(whole))
            if whole:
                text = "".join(json.loads(record)[2] for record in whole.splitlines())
                return text.encode("utf-8", "surrogateescape").replace(b"\n", b"\r\n")
            if (self.run_dir / "ended").exists():
                break
            self.closed.wait(0.05)
        self.output.close()
        return b""

    def write(self, data: bytes) -> bytes:
        line, echo, interrupt = self.keyboard.feed(data)
        if line:
            try:
                fifo = os.open(self.run_dir / "stdin", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # the supervisor is gone: so is the run
                return echo
            try:
                os.write(fifo, line)
            except BlockingIOError:
                echo += b"[the run is not reading its input: that line was dropped]\r\n"
            finally:
                os.close(fifo)
        if interrupt and self.pgid is not None:
            _signal_group(self.pgid, signal.SIGINT)
        return echo

    def resize(self, cols: int, rows: int) -> None:
        pass  # the run's PTY keeps its size: other viewers of the same process may differ

    def close(self) -> None:
        self.closed.set()

    def exit_code(self) -> None:
        return None  # the main process's is the run's


class LocalTerminal:
    """A shell on its own PTY, in the run's directory and environment. `records`: a
    folder where it is noted while it runs, so the run's end can kill it from any process."""

    writable = True

    def __init__(self, argv: list[str], cwd: Path, env: dict, cols: int, rows: int, records: Path | None = None):
        self.master, follower = os.openpty()
        self.guard = threading.Lock()  # the PTY's file number is used only while open
        self.open = True
        self.resize(cols, rows)
        self.marker = secrets.token_hex(12)
        try:
            self.process = subprocess.Popen(
                argv, cwd=cwd, env={**env, TERMINAL_MARKER: self.marker}, stdin=follower, stdout=follower, stderr=follower,
                start_new_session=True, close_fds=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the PTY is its controlling terminal
            )
        except OSError as exc:
            os.close(self.master)
            raise ExecutorError(f"could not start a shell: {exc}") from None
        finally:
            os.close(follower)
        self.record = None
        if records is not None:
            records.mkdir(mode=0o700, exist_ok=True)
            self.record = records / str(self.process.pid)
            self.record.write_text(self.marker)

    def read(self) -> bytes:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the PTY has gone
            data = b""
        if not data:
            # Only the reader closes the PTY: closed under a blocked read, its
            # number could be reused by another file before the read returns.
            with self.guard:
                self.open = False
                os.close(self.master)
        return data

    def write(self, data: bytes) -> None:
        with self.guard:
            if self.open:
                os.write(self.master, data)

    def resize(self, cols: int, rows: int) -> None:
        with self.guard:
            if self.open:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        """Kill the shell and everything it started, jobs in groups of their own
        included (found by its session and marker); the reader then sees the end."""
        # Also once the shell has exited by itself: the jobs it left behind still run.
        kill_terminal_processes(self.marker, self.process.pid)
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGHUP)  # where /proc cannot tell (macOS), the group at least
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def exit_code(self) -> int | None:
        """The shell's, as a shell reports it (128+N for a signal N); None while it runs."""
        code = self.process.poll()
        return None if code is None else (128 - code if code < 0 else code)
