"""Runs as Docker containers: one container per run, named and labelled by run id.

The only module that imports `docker`.

A run's ports (open_port) are reached without giving the run any network: a run's
container has loopback only (network mode `none`), so nothing outside it, the console
included, can connect to it, and it can connect to nothing outside. Each connection
is instead a `docker exec` in the run of a relay that connects to 127.0.0.1:PORT there
and pipes the bytes over the exec's own stream (the engine's API, which the console
already uses for terminals, so this works the same for a remote engine or a Swarm
node). The relay is BusyBox's `nc`, from a statically linked BusyBox on the console's
host (RUNYARD_PORT_RELAY), copied into the run at its first use: it needs nothing
from the run's image, not even a C library. The alternatives were worse: a network
shared with the console is a route out of the run; a sidecar container in the run's
network namespace needs an image of ours on every engine; and nsenter needs the
console on the engine's host, as root.
"""

import calendar
import contextlib
import hashlib
import io
import logging
import math
import secrets
import socket
import ssl
import struct
import tarfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from functools import cached_property
from itertools import repeat

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DriverConfig, Mount
from django.conf import settings

from runs.executors.base import (
    REPORTER_FILE, SHELL_COMMAND, TERMINAL_MARKER, AttachedInput, ExecutorError, ExitInfo, ImagePull, Limits, LineRun, LogFrame, Sample,
    frames_in, script_for, with_reporter,
)
from runs.executors.static_relay import relay_tar
from runs.executors.terminal_processes import can_see, kill_terminal_processes

log = logging.getLogger(__name__)

RUNYARD_DIR = "/run/runyard"
REPORTER_DIR = "/opt/runyard/python"
RELAY_PATH = "/opt/runyard/bin/busybox"  # BusyBox picks the applet from argv[1] when its name starts so
# Containers (by id) known to hold the relay, in this process: checked once each.
_relay_ready: set[str] = set()
# docker-init (tini) sends the signals it gets to the main process's whole group: the
# user's commands get SIGTERM and Ctrl-C's SIGINT themselves (base.run_script).
SIGNAL_THE_GROUP = {"TINI_KILL_PROCESS_GROUP": "1"}
READ_AHEAD_BYTES = 8 << 20  # of the log read but not yet taken by the collector
READ_BLOCK_BYTES = 1 << 16
# After a short read, the log reader waits this long: what comes meanwhile is read at once.
GATHER_SECONDS = 0.003
STREAM_OF_FRAME = {1: 0, 2: 1}  # docker's frame types: 1 stdout, 2 stderr
# The engine's own copy of a run's output is capped: Runyard stores every line
# itself, and the collector reads well within the cap. The `local` driver: its
# follows survive a rotation (json-file's lose and repeat entries there, engine
# 20.10), and its rotated files stay readable by the logs API. follow_logs resumes
# by time, so files dropped behind the collector do not matter.


def log_config() -> dict:
    size, files = settings.RUNYARD_DOCKER_LOG_MAX_SIZE_MB, settings.RUNYARD_DOCKER_LOG_MAX_FILES
    return {"Type": "local", "Config": {"max-size": f"{size}m", "max-file": str(files), "compress": "true"}}


# The engine cuts a line longer than this into pieces of exactly this size, and
# the `local` driver loses the newline after the last piece: a piece without a
# newline that is shorter ends its line.
ENGINE_PIECE_BYTES = 16 * 1024

# A run's commands wait at a gate, a line on the main process's stdin, until its
# collector has attached to their output (follow_log_batches): output read as the
# process writes it costs the engine a small part of what reading its log back does,
# entry by entry (about 2 against 14 CPU-seconds for a million lines). Past the gate
# the script leaves a mark, so a later collector knows not to open it again.
GATE_LABEL, GATE_STDIN = "runyard.gate", "stdin"
BEGAN_FILE = "began"
# Past the gate, before any command of the run, the script prints an origin mark on
# stdout and on stderr. Each stream's entries reach the engine's log in order, so
# the log's first entry is one of the two marks, whichever stream the engine wrote
# first. A collector never stores them; one that resumes from an attach's counts
# finds a mark first, or knows the engine has dropped the log's oldest files
# meanwhile (the counts would then skip lines: LogHeadLost). The mark's token is the
# container's label, so a run cannot print it by chance.
ORIGIN_LABEL = "runyard.log-origin"


def gate_script(token: str) -> str:
    mark = origin_line(token).decode()[:-1]
    return f'IFS= read -r runyard_gate || :\necho \'{mark}\'; echo \'{mark}\' >&2\n: 2>/dev/null >"$RUNYARD_DIR/{BEGAN_FILE}"\n'


def origin_line(token: str) -> bytes:
    return f"runyard: output begins {token}\n".encode()


def plain_socket(sock) -> socket.socket:
    """The socket itself: docker-py hands a unix socket's connection over wrapped in a SocketIO."""
    return getattr(sock, "_sock", sock)


def _origin_of(container) -> bytes:
    """The origin mark a run's container prints (b"" for one from before marks)."""
    token = (container.labels or {}).get(ORIGIN_LABEL, "")
    return origin_line(token) if token else b""


# Where a follow resuming from an attach's counts found the engine's log cut short
# (LogHeadLost), the lines between what was stored and what the engine kept are gone;
# the log says so where they were.
LOST_NOTICE = (b"[runyard] lines are missing here: the engine dropped the oldest part of this run's output "
               b"before Runyard stored it (it keeps only the newest entries of a run's log)\n")
# What an entry of the `local` driver's file takes beyond its text (its time, stream,
# framing; about 30 bytes): an attach estimates the engine's log size with it.
ENTRY_BYTES = 40
# What the engine may have logged beyond what an attach read: its buffer for each of
# the attach's streams (1 MB each), and the sockets' between.
ATTACH_SLACK_BYTES = 4 << 20


class LogPosition:
    """Where a read of a container's log stands: `count` entries read of those at or
    after the whole second `since` (0: from the first entry), in the order the logs
    API returns them. Packed into one integer for Run.log_cursor; a cursor from
    before (a plain count) decodes to since=0 and means the same.

    An attach (AttachedEntries) counts each stream's entries from the first instead,
    since its output carries no time: ATTACH_BIT, then the stdout count, then the
    stderr count. A follow from such a cursor reads from the first entry and passes
    over the first so many of each stream (`stored`), the two streams' entries being
    in the logs API's order a little otherwise than the attach had them; it counts
    plainly once it is past them all."""

    COUNT_BITS = 24
    MARGIN_SECONDS = 2  # how far behind the newest entry the resume point stays
    MARGIN_NS = MARGIN_SECONDS * 1_000_000_000
    ATTACH_BIT = 1 << 62
    STREAM_BITS = 31

    def __init__(self, since: int = 0, count: int = 0, stored: tuple[int, int] | None = None):
        self.since, self.count, self.skip = since, count, 0
        self.recent: dict[int, int] = {}  # whole second -> entries counted in it
        # From an attach cursor: each stream's entries stored already, and passed so far.
        self.stored, self.passed = (list(stored), [0, 0]) if stored and any(stored) else (None, [0, 0])
        # After a lost head (LogHeadLost): entries stamped up to this (ns) are passed over,
        # and LOST_NOTICE is owed before the first one taken.
        self.after_ns, self.lost = 0, False

    @classmethod
    def after(cls, unix_time: float) -> "LogPosition":
        """From the first entry stamped later than `unix_time`, behind LOST_NOTICE."""
        position = cls(int(unix_time))
        position.after_ns, position.lost = round(unix_time * 1e9), True
        return position

    @classmethod
    def decode(cls, cursor: int) -> "LogPosition":
        if cursor & cls.ATTACH_BIT:
            mask = (1 << cls.STREAM_BITS) - 1
            return cls(stored=((cursor >> cls.STREAM_BITS) & mask, cursor & mask))
        return cls(cursor >> cls.COUNT_BITS, cursor & ((1 << cls.COUNT_BITS) - 1))

    @classmethod
    def attached(cls, stdout: int, stderr: int) -> int:
        """The cursor after `stdout` and `stderr` entries of each stream (0 for none)."""
        return cls.ATTACH_BIT | (stdout << cls.STREAM_BITS) | stderr if stdout or stderr else 0

    def encode(self) -> int:
        if self.stored is not None:
            return self.attached(*(max(stored, passed) for stored, passed in zip(self.stored, self.passed)))
        return (self.since << self.COUNT_BITS) | min(self.count + self.skip, (1 << self.COUNT_BITS) - 1)

    def restart(self) -> None:
        """A new follow from `since` begins: its first entries are the ones already read."""
        self.skip, self.count = self.skip + self.count, 0
        self.recent.clear()

    def take(self, second: int, stream: int = 0) -> bool:
        """Count the next entry of the follow; False if it was read before (a replay)."""
        replayed = self.skip > 0
        if replayed:
            self.skip -= 1
        elif self.stored is not None:  # since is 0 meanwhile: every entry is counted
            self.passed[stream] += 1
            replayed = self.passed[stream] <= self.stored[stream]
            if self.passed[0] >= self.stored[0] and self.passed[1] >= self.stored[1]:
                self.stored = None  # past all that the attach stored: a plain count from here
        if second >= self.since:  # a later follow from `since` returns it again
            self.count += 1
            self.recent[second] = self.recent.get(second, 0) + 1
        if not replayed and self.stored is None and second - self.MARGIN_SECONDS > self.since:
            # Move the resume point up; count again only what lies at or after it.
            self.since = second - self.MARGIN_SECONDS
            self.recent = {s: n for s, n in self.recent.items() if s >= self.since}
            self.count = sum(self.recent.values())
        return not replayed

    def __str__(self) -> str:
        if self.stored is not None:
            return f"stdout entry {max(self.stored[0], self.passed[0])}, stderr entry {max(self.stored[1], self.passed[1])}"
        return f"entry {self.count + self.skip} from second {self.since}"


def engine_reachable(timeout: float = 2.0) -> bool:
    try:
        client = _client(timeout=timeout)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


# The API version each engine answered with, by its address: a new client asks the
# engine once per process, not at every start (a round trip of its own).
_api_versions: dict[str, str] = {}


def _client(timeout: float = 60) -> docker.DockerClient:
    if settings.DOCKER_HOST:
        return _versioned(settings.DOCKER_HOST, lambda version: docker.DockerClient(
            base_url=settings.DOCKER_HOST, timeout=timeout, version=version))
    return _versioned("", lambda version: docker.from_env(timeout=timeout, version=version))


def _versioned(address: str, make) -> docker.DockerClient:
    client = make(_api_versions.get(address))
    _api_versions.setdefault(address, client.api.api_version)
    return client


class StreamBroke(Exception):
    """A follow of a container's log ended without its end: the connection to the engine broke."""


class LogHeadLost(Exception):
    """A follow from an attach's counts found the log's first entry gone: the engine
    dropped its oldest files, and the counts no longer say where to go on."""


class _ChunkReader(io.RawIOBase):
    """A file object over the engine's chunked answer, for tarfile's stream mode."""

    def __init__(self, chunks):
        self.chunks, self.pending = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            try:
                self.pending = next(self.chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size


class DockerExecutor:
    name = "docker"
    places_runs = False  # it starts a run itself (a Swarm places its runs: runs.engine)

    def __init__(self, instance_id: str, base_url: str = "", tls=None):
        # base_url: another engine than this console's own (a Swarm node's, say).
        self.instance_id, self.base_url, self.tls = instance_id, base_url, tls

    @cached_property
    def client(self) -> docker.DockerClient:
        return self.new_client()

    def new_client(self, timeout: float = 60) -> docker.DockerClient:
        """A client of this executor's engine, with a connection pool of its own."""
        if self.base_url:
            return _versioned(self.base_url, lambda version: docker.DockerClient(
                base_url=self.base_url, tls=self.tls or False, timeout=timeout, version=version))
        return _client(timeout=timeout)

    def container_name(self, run) -> str:
        return f"runyard-{self.instance_id}-run-{run.pk}"

    def _container(self, run):
        try:
            return self.client.containers.get(self.container_name(run))
        except NotFound:
            return None

    def prepare(self, run, pull: ImagePull | None = None) -> str:
        """The image's digest; a reproduction must find the very image its origin ran.
        With `pull`, the registry is asked first, every time (runs.credentials)."""
        wanted = run.image_digest or run.image
        if pull is not None:
            self._pull(run, pull)
        try:
            image = self.client.images.get(wanted)
        except ImageNotFound:
            if run.image_digest:
                raise ExecutorError(f"image not found: {run.image} at {run.image_digest} (pinned by the run this reproduces)") from None
            raise ExecutorError(f"image not found: {run.image}") from None
        except (APIError, DockerException) as exc:
            raise ExecutorError(f"docker engine error while looking up image {run.image}: {exc}") from None
        return image.id

    def _pull(self, run, pull: ImagePull) -> None:
        try:
            self.client.images.pull(run.image, auth_config=pull.auth_config())
        except (APIError, DockerException) as exc:
            raise ExecutorError(pull_failure(run.image, pull, exc)) from None

    def start(self, run, env: dict[str, str], limits: Limits, imports: list, pull: ImagePull | None = None) -> str:
        exports = run.spec.get("export", {})
        # The reporter comes from a read-only volume filled once per engine: copying it
        # into each new container (put_archive) cost the engine a mount of the
        # container's filesystem and an untar process at every start.
        # A list, not a dict keyed by volume: two paths may import the same content (one volume).
        mounts = [f"{self._reporter_volume(run)}:{REPORTER_DIR}:ro"]
        mounts += [f"{self._import_volume(run, item)}:{item.path.rstrip('/') or '/'}:ro" for item in imports]
        token = secrets.token_hex(8)
        script = gate_script(token) + script_for(run.spec)
        memory = f"{limits.memory_mb}m"
        api = self.client.api
        try:
            # Created straight away: a retried start finds its container by the name's conflict.
            # The low-level call: the models' create reads the new container back (a second
            # round trip on every start) for nothing a start needs.
            config = api.create_container_config(
                image=run.image_digest or run.image,
                command=["/bin/sh", "-c", script],
                labels={"runyard.instance": self.instance_id, "runyard.run": str(run.pk), GATE_LABEL: GATE_STDIN,
                        ORIGIN_LABEL: token},
                environment={**with_reporter(env, REPORTER_DIR), "RUNYARD_DIR": RUNYARD_DIR, **SIGNAL_THE_GROUP},
                stdin_open=True,  # for an attach (and the gate): a read waits for a line
                tty=False,
                host_config=api.create_host_config(
                    init=True,
                    network_mode=settings.RUNYARD_DOCKER_NETWORK,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    privileged=False,
                    nano_cpus=int(limits.cpus * 1e9),
                    mem_limit=memory,
                    memswap_limit=memory,
                    pids_limit=4096,
                    mounts=[runyard_dir_mount()],
                    binds=mounts,
                    log_config=log_config(),
                ),
            )
            # docker-py turns StdinOnce on with stdin_open: the end of any attach with an
            # input (a collector's, a terminal's) would then close the run's stdin for good.
            config["StdinOnce"] = False
            container_id = api.create_container_from_config(config, name=self.container_name(run))["Id"]
            fresh = True
        except ImageNotFound:
            raise ExecutorError(f"image not found: {run.image}") from None
        except APIError as exc:
            if exc.status_code != 409:  # 409: a retried task raced us to the name, or made it before
                raise ExecutorError(f"container create error: {exc.explanation or exc}") from None
            container = self._container(run)
            if container is None:
                raise ExecutorError(f"container create error: {exc.explanation or exc}") from None
            container_id, fresh = container.id, container.status == "created"
        if fresh:
            try:
                if any(path.strip("/") for path in exports):
                    api.put_archive(container_id, "/", export_folders_tar(exports))
                api.start(container_id)
            except APIError as exc:
                raise ExecutorError(f"container start error: {exc.explanation or exc}") from None
        return container_id

    def _reporter_volume(self, run) -> str:
        """A volume holding the in-run reporter module (runyard.py), named by its
        content: filled once on this engine, then mounted read-only by every run."""
        data = REPORTER_FILE.read_bytes()
        key = hashlib.sha256(data).hexdigest()[:16]
        return self._filled_volume(run, f"runyard-reporter-{key}", {"runyard.reporter": key},
                                   lambda: _reporter_tar(data), "the reporter module")

    def _import_volume(self, run, item) -> str:
        """A volume holding the import's content, filled once and reused by every run
        that reads the same content (its name is the content's key)."""
        return self._filled_volume(run, f"runyard-import-{item.key}"[:200], {"runyard.import": item.key},
                                   item.open_tar, item.description)

    def _filled_volume(self, run, name: str, labels: dict, open_tar, description: str) -> str:
        """Volume `name`, filled once with the tar that open_tar() gives (bytes, or a
        context manager giving a stream), and reused while its `-ready` twin exists."""
        ready = f"{name}-ready"  # created only after a complete fill
        try:
            self.client.volumes.get(ready)
            return name
        except NotFound:
            pass
        self.client.volumes.create(name, labels=labels)
        try:
            filler = self.client.containers.create(
                image=run.image_digest or run.image, command=["true"], network_mode="none",
                volumes={name: {"bind": "/import", "mode": "rw"}}, labels={"runyard.filler": next(iter(labels.values()))},
            )
        except (ImageNotFound, APIError) as exc:
            raise ExecutorError(f"could not prepare {description}: {exc}") from None
        try:
            tar = open_tar()
            with tar if hasattr(tar, "__enter__") else contextlib.nullcontext(tar) as stream:
                if not filler.put_archive("/import", stream):
                    raise ExecutorError(f"could not copy {description} into its volume")
        except APIError as exc:
            raise ExecutorError(f"could not copy {description} into its volume: {exc.explanation or exc}") from None
        finally:
            filler.remove(force=True)
        self.client.volumes.create(ready, labels=labels)
        return name

    def read_export(self, run, path: str):
        container = self._container(run)
        if container is None:
            raise ExecutorError("container disappeared before its exports were copied")
        try:
            chunks, _ = container.get_archive(path)
        except NotFound:
            return None
        return _ChunkReader(chunks)

    def follow_logs(self, run, cursor: int) -> Iterator[LogFrame | None]:
        """Every log entry in order, from `cursor` on, a frame at a time (follow_log_batches)."""
        batches = self.follow_log_batches(run, cursor)
        try:
            for batch in batches:
                if batch is None:
                    yield None
                else:
                    yield from frames_in(batch)
        finally:
            batches.close()

    def follow_log_batches(self, run, cursor: int) -> Iterator[list[LogFrame | LineRun] | None]:
        """Every log entry in order, from `cursor` on (see LogPosition), in lists of
        what was read at once, each frame with the cursor just after it.

        A run that waits at its gate (gate_script) is read through an attach to its
        main process, as its output comes (_read_attached). Every other read, and
        one that an attach hands on, follows the engine's log.

        The engine keeps only the newest entries (the log is capped, log_config) and
        ends a follow when it rotates the file, so a read resumes by time: from a
        whole second a little behind the last entry read, skipping the entries of
        that stretch already read. A count within the stretch, not a time, because
        stdout and stderr entries can be written slightly out of time order.

        A follow from an attach's counts first checks that the engine still keeps
        the log's first entry, one of the run's origin marks (gate_script): a
        collector that died, and a run that printed more than the log's cap before
        the next one came, leave a log whose oldest files are gone. The read then goes on
        by time, after the last output stored (or read here), behind a line that
        says lines are missing (LOST_NOTICE).
        """
        position = LogPosition.decode(cursor)
        held = None  # an attach that holds the run's output until the follow has the log open
        read_until = 0.0  # when this read last had output through an attach
        if cursor == 0:
            attachment = self._attach_at_gate(run)
            if attachment is not None:
                entries = _AttachedEntries(attachment.origin)
                try:
                    ended = yield from self._read_attached(run, attachment, entries)
                except BaseException:
                    attachment.close()
                    raise
                if ended:
                    attachment.close()
                    return
                if attachment.holding:
                    held = attachment
                else:
                    attachment.close()
                position = LogPosition.decode(LogPosition.attached(*entries.counts))
                read_until = entries.last_at
                log.info("run %s: following the engine's log from %s", run.pk, position)
        try:
            while True:
                container = self._container(run)
                if container is None:
                    raise ExecutorError("container disappeared")
                # The engine may end a follow when the container stops before it sent
                # the whole file; a read begun after the stop is complete.
                ended_before_read = container.status not in ("running", "created", "restarting", "paused")
                try:
                    for batch in self._read_logs(run, container.id, position, opened=held.close if held else None,
                                                 origin=_origin_of(container)):
                        yield batch
                except StreamBroke as exc:
                    log.warning("run %s: log stream broke (%s), reading on from %s", run.pk, exc, position)
                    time.sleep(1)
                    continue
                except LogHeadLost:
                    from runs.logstore import last_stored_time

                    after = max(last_stored_time(run.pk), read_until)
                    log.warning("run %s: the engine dropped the start of its log before %s was read; "
                                "reading on after %.6f", run.pk, position, after)
                    position = LogPosition.after(after)
                    continue
                if ended_before_read:
                    return
        finally:
            if held is not None:
                held.close()

    def _attach_at_gate(self, run) -> "_Attachment | None":
        """For a run whose container waits at its gate: an attach to its main process,
        made before the gate is opened, so that it sees all of the output. None for
        any other (the gate opened before, a container from before gates, stopped)."""
        container = self._container(run)
        if container is None or container.status != "running" or container.labels.get(GATE_LABEL) != GATE_STDIN:
            return None
        client = self.new_client()  # a connection of its own, held for as long as the run lasts
        api = client.api
        try:
            if self.gate_opened(container.id):
                client.close()  # an earlier collector opened it: the engine's log has all since
                return None
            sock = api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            attachment = _Attachment(client, sock, container.id, _log_cap_bytes(container.attrs), _origin_of(container))
            attachment.raw.sendall(b"\n")  # the gate's line
            return attachment
        except (APIError, DockerException, OSError) as exc:
            log.warning("run %s: could not attach to its output (%s): following its log", run.pk, exc)
            client.close()
            return None

    def open_gate(self, run) -> bool:
        """Let a run that waits at its gate begin with no collector attached (none came;
        its output waits in the engine's log for the one that comes). The caller holds
        the run's lease: no collector opens the gate meanwhile. True if it was waiting."""
        attachment = self._attach_at_gate(run)
        if attachment is None:
            return False
        try:
            # Detached at once, the engine may drop the line it has not passed on yet.
            self._await_gate_opened(attachment.container_id)
        finally:
            attachment.close()
        return True

    def gate_opened(self, container_id: str) -> bool:
        """Whether the run's script is past its gate (it left BEGAN_FILE)."""
        api = self.client.api
        began = api.head(api._url("/containers/{0}/archive", container_id), params={"path": f"{RUNYARD_DIR}/{BEGAN_FILE}"})
        return began.status_code == 200

    def _await_gate_opened(self, container_id: str, patience: float = 5.0) -> bool:
        deadline = time.monotonic() + patience
        while not self.gate_opened(container_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _read_attached(self, run, attachment: "_Attachment", entries: "_AttachedEntries"):
        """The run's output through `attachment`, in lists of frames as _read_logs gives
        them. Returns True once the output ended with the container; False where the
        engine's log must take over from `entries.counts`: the attach broke, or the
        engine's log grew so near its cap that it would soon drop its first entries,
        which a follow from the counts reads past (then the attachment is left
        `holding` the run's output until the follow has the log open)."""
        container_id, log_bytes = attachment.container_id, attachment.log_bytes
        blocks: deque = deque()
        added, taken = [0], [0]
        arrived = threading.Event()
        outcome: list = []  # "ended", "capped", or the exception the reader died of

        def read() -> None:
            estimated = 0  # of the engine's log, written as this reads
            try:
                while not attachment.closed:
                    block = attachment.raw.recv(READ_BLOCK_BYTES)
                    if not block:
                        outcome.append("ended")
                        return
                    blocks.append((block, time.time()))
                    added[0] += len(block)
                    arrived.set()
                    estimated += len(block) + ENTRY_BYTES * block.count(b"\n")
                    if estimated > log_bytes:
                        attachment.holding = True  # read no further: the run's output waits
                        outcome.append("capped")
                        return
                    while added[0] - taken[0] > READ_AHEAD_BYTES and not attachment.closed:
                        time.sleep(0.01)  # the database is behind: the run's output waits for it
                    if len(block) < READ_BLOCK_BYTES // 4:
                        time.sleep(GATHER_SECONDS)  # a trickle: let more come, for one read of it all
            except Exception as exc:  # the reader dies with the connection; say why
                outcome.append(exc)
            finally:
                outcome.append(None)
                arrived.set()

        threading.Thread(target=read, name=f"attach-run-{run.pk}", daemon=True).start()
        while True:
            if not arrived.wait(1.0):
                yield None
                continue
            arrived.clear()
            finished = bool(outcome)  # read before draining: nothing can follow the end
            while blocks:
                block, at = blocks.popleft()
                taken[0] += len(block)
                batch = entries.frames(block, at)
                if batch:
                    yield batch
            if finished:
                break
        if outcome[0] == "ended" and not entries.rest and self._stopped(container_id):
            batch = entries.end(time.time())  # the engine ends an unended line at the end too
            if batch:
                yield batch
            return True
        if outcome[0] not in ("ended", "capped"):
            log.warning("run %s: its attach broke (%s)", run.pk, outcome[0])
        return False

    def _stopped(self, container_id: str, patience: float = 5.0) -> bool:
        """Whether the container has stopped, waiting up to `patience` seconds: its
        output ends a moment before the engine marks it stopped."""
        deadline = time.monotonic() + patience
        while True:
            try:
                state = self.client.api.inspect_container(container_id)["State"]
            except NotFound:
                state = {"Status": "removing"}
            if state.get("Status") == "removing":  # removed from outside: its end is no exit of its own
                raise ExecutorError("container disappeared")
            if not state.get("Running"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _read_logs(self, run, container_id: str, start: "LogPosition", opened=None,
                   origin: bytes = b"") -> Iterator[list[LogFrame] | None]:
        """One follow from `start`, in lists of frames; `start` is advanced past every
        entry yielded. `opened` is called once the engine sends the log: it has its
        files open then. `origin`: the run's origin mark (_FrameCutter)."""
        client = self.new_client()  # a connection of its own, held for as long as the run lasts
        params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1, "tail": "all"}
        if start.since:
            params["since"] = start.since
        try:
            response = client.api._get(
                client.api._url("/containers/{0}/logs", container_id), params=params, stream=True,
            )
            client.api._raise_for_status(response)
        except NotFound:
            client.close()
            raise ExecutorError("container disappeared") from None
        # The engine sends a frame per line, each in an HTTP chunk of its own: a reader
        # thread reads the body in blocks, as much as has come, into a deque, and this
        # generator cuts the frames out of whatever has piled up at each wake-up.
        blocks: deque = deque()
        added, taken = [0], [0]  # bytes put in `blocks` (by the reader), and taken out (here)
        arrived = threading.Event()
        outcome: list = []

        def read() -> None:
            try:
                client.api._disable_socket_timeout(client.api._get_raw_response_socket(response))
                for block in _body_blocks(response):
                    blocks.append(block)
                    added[0] += len(block)
                    if not arrived.is_set():
                        arrived.set()
                    while added[0] - taken[0] > READ_AHEAD_BYTES:  # the database is behind: wait for it
                        time.sleep(0.01)
            except Exception as exc:  # the reader dies with the connection; say why
                outcome.append(exc)
            finally:
                outcome.append(None)
                arrived.set()

        reader = threading.Thread(target=read, name=f"logs-run-{run.pk}", daemon=True)
        reader.start()
        start.restart()
        cutter = _FrameCutter(start, origin)
        try:
            while True:
                if not arrived.wait(1.0):
                    yield None
                    continue
                arrived.clear()
                finished = bool(outcome)  # read before draining: nothing can follow the end
                while blocks:
                    block = blocks.popleft()
                    if opened is not None:
                        opened()
                        opened = None
                    taken[0] += len(block)
                    batch = cutter.frames(block)
                    if batch:
                        yield batch
                if finished:
                    if outcome[0] is not None:
                        raise StreamBroke(outcome[0])
                    return
        finally:
            # The reader may wait in a read of a quiet run's log, holding the buffer's lock
            # that closing the response takes: the socket shut first, that read returns.
            with contextlib.suppress(Exception):  # a response that has no socket left has nothing to wake
                plain_socket(client.api._get_raw_response_socket(response)).shutdown(socket.SHUT_RDWR)
            response.close()
            client.close()

    def main_exit_code(self, run) -> int | None:
        """Read through the engine's archive API: no program of the image is needed
        (an image may have nothing but /bin/sh)."""
        container = self._container(run)
        if container is None or container.status != "running":
            return None
        try:
            chunks, _ = container.get_archive(f"{RUNYARD_DIR}/exit_code")
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.next()
                text = tar.extractfile(member).read() if member is not None and member.isfile() else b""
        except (APIError, tarfile.TarError):
            return None  # not written yet
        try:
            return int(text.decode().strip())
        except ValueError:
            return None  # half written

    def exit_info(self, run) -> ExitInfo:
        container = self._container(run)
        if container is None:
            return ExitInfo(None, "container disappeared")
        state = container.attrs["State"]
        if state.get("Running"):
            return ExitInfo(None, "still running")
        reason = "killed: out of memory" if state.get("OOMKilled") else ""
        return ExitInfo(state.get("ExitCode"), reason)

    def exists(self, run) -> bool:
        return self._container(run) is not None

    def sample(self, run) -> Sample | None:
        """One reading of the engine's stats. `one_shot`: at once, without the second
        reading a second later that the engine would otherwise wait for; the CPU %
        comes from this reading and the previous one (runs.system_metrics)."""
        container = self._container(run)
        if container is None or container.status != "running":
            return None
        try:
            stats = container.stats(stream=False, one_shot=True)
        except (APIError, DockerException):
            return None  # it ended meanwhile
        return sample_from_stats(stats)

    def stop(self, run, grace: float) -> None:
        container = self._container(run)
        if container is None:
            return
        try:
            # Docker sends SIGTERM, waits, then SIGKILLs: exactly the grace SPEC §1 asks for.
            container.stop(timeout=max(0, math.ceil(grace)))
        except NotFound:
            pass

    def remove(self, run) -> None:
        # By label, not name: also catches a container a crashed worker left under another name.
        labels = [f"runyard.instance={self.instance_id}", f"runyard.run={run.pk}"]
        for container in self.client.containers.list(all=True, filters={"label": labels}):
            try:
                container.remove(force=True, v=True)  # and its RUNYARD_DIR volume
            except NotFound:
                pass

    def live_run_ids(self) -> set[int]:
        containers = self.client.containers.list(all=True, filters={"label": f"runyard.instance={self.instance_id}"})
        return {int(c.labels["runyard.run"]) for c in containers if c.labels.get("runyard.run", "").isdigit()}

    def open_terminal(self, run, mode: str, cols: int, rows: int) -> "DockerTerminal":
        container = self._container(run)
        if container is None or container.status != "running":
            raise ExecutorError("the run's container is not running")
        client = self.new_client()  # a connection of its own, held while the terminal is open
        try:
            if mode == "attach":
                # The main process itself: no TTY, its stdin a pipe that outlives the attach.
                if not container.attrs["Config"].get("OpenStdin"):
                    raise ExecutorError("this run was started without an input to attach to: open a new shell instead")
                sock = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
                return DockerTerminal(client, sock, exec_id=None, container_id=container.id)
            marker = secrets.token_hex(12)  # finds the shell's processes from inside the container, if need be
            exec_id = client.api.exec_create(
                container.id, SHELL_COMMAND, stdin=True, tty=True,
                environment={"TERM": "xterm-256color", TERMINAL_MARKER: marker},
            )["Id"]
            sock = client.api.exec_start(exec_id, tty=True, socket=True)
            terminal = DockerTerminal(client, sock, exec_id=exec_id, marker=marker)
            terminal.resize(cols, rows)
            return terminal
        except (APIError, DockerException) as exc:
            client.close()
            raise ExecutorError(f"could not open a terminal: {getattr(exc, 'explanation', None) or exc}") from None

    def open_port(self, run, port: int) -> "DockerPortStream":
        container = self._container(run)
        if container is None or container.status != "running":
            raise ExecutorError("the run's container is not running")
        client = self.new_client()  # a connection of its own, held while the connection lasts
        try:
            _ensure_relay(client, container.id)
            exec_id = client.api.exec_create(
                container.id, [RELAY_PATH, "nc", "127.0.0.1", str(port)], stdin=True, stdout=True, stderr=True,
            )["Id"]
            return DockerPortStream(client, client.api.exec_start(exec_id, socket=True))
        except (APIError, DockerException) as exc:
            client.close()
            raise ExecutorError(f"could not reach port {port} in the run: {getattr(exc, 'explanation', None) or exc}") from None
        except ExecutorError:
            client.close()
            raise


def _relay_runs(client, container_id: str) -> tuple[bool, str]:
    """Whether the relay starts in the container, and what it said if not."""
    exec_id = client.api.exec_create(container_id, [RELAY_PATH, "true"], stdout=True, stderr=True)["Id"]
    output = client.api.exec_start(exec_id)
    return client.api.exec_inspect(exec_id).get("ExitCode") == 0, output.decode("utf-8", "replace").strip()


def _ensure_relay(client, container_id: str) -> None:
    """Put the relay into the run's container unless it is there. Checked before copying:
    a copy over a relay that runs (another console process's) would fail, text file busy."""
    if container_id in _relay_ready:
        return
    ready, _ = _relay_runs(client, container_id)
    if not ready:
        try:
            client.api.put_archive(container_id, "/", relay_tar(RELAY_PATH))
        except APIError as exc:
            log.info("copying the port relay into %s failed (%s): checking whether another process did", container_id[:12], exc)
        ready, said = _relay_runs(client, container_id)
        if not ready:
            raise ExecutorError(f"the port relay does not start in this run's container ({said[:300]})")
    if len(_relay_ready) > 10_000:
        _relay_ready.clear()
    _relay_ready.add(container_id)


def recv_exactly(sock, size: int) -> bytes:
    """`size` bytes from a hijacked exec socket, or fewer where it ends."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class DockerPortStream:
    """The relay's exec stream. Without a TTY the engine frames what it sends (stdout,
    stderr); stdout is the port's bytes, stderr says why `nc` could not connect.

    Closing ends the relay's input: `nc` then closes its side of the connection for
    writing, and exits once the app closes the connection, as an app does."""

    def __init__(self, client, sock):
        self.client = client
        self.sock = plain_socket(sock)
        self.sock.settimeout(None)
        self.left = 0  # bytes of the current stdout frame not read yet
        self.said = bytearray()  # the relay's stderr, the first KiB

    def read(self) -> bytes:
        try:
            while True:
                if self.left:
                    data = self.sock.recv(min(self.left, 65536))
                    self.left -= len(data)
                    return data
                header = self._exactly(8)
                if len(header) < 8:
                    return b""
                kind, length = struct.unpack(">BxxxL", header)
                if kind == 2:
                    text = self._exactly(length)
                    self.said += text[:max(0, 1024 - len(self.said))]
                else:
                    self.left = length
        except OSError:
            return b""

    def _exactly(self, size: int) -> bytes:
        return recv_exactly(self.sock, size)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.client.close()

    def failure(self) -> str:
        return self.said.decode("utf-8", "replace").strip().removeprefix("nc: ")


REFUSED = ("unauthorized", "authentication required", "no basic auth credentials", "denied", "forbidden")


def pull_failure(image: str, pull: ImagePull, exc: Exception) -> str:
    """Why the image could not be pulled, as a run's status reason: a login refused (or
    missing) is said so, naming the credential, never its secret."""
    detail = " ".join(str(getattr(exc, "explanation", None) or exc).split())[:300]
    if any(word in detail.lower() for word in REFUSED):
        if pull.credential:
            return f"image {image}: registry {pull.registry} refused credential {pull.credential!r} ({detail})"
        return (f"image {image}: registry {pull.registry} needs a login: name a registry credential of your team "
                f"with image: {{url, credential_name}} ({detail})")
    return f"image not found: {image} could not be pulled from {pull.registry} ({detail})"


def sample_from_stats(stats: dict) -> Sample | None:
    """The container's CPU time so far and its memory as `docker stats` counts it: the
    usage minus the file cache the kernel may take back (inactive_file: cgroup v1
    names it total_inactive_file)."""
    cpu_ns = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
    memory = stats.get("memory_stats", {})
    usage, read = memory.get("usage"), stats.get("read", "")
    if cpu_ns is None or usage is None or not read or read.startswith("0001-"):
        return None  # not running: the engine answers with empty stats
    details = memory.get("stats", {})
    cache = details.get("total_inactive_file", details.get("inactive_file", 0))
    used = usage - cache if cache < usage else usage
    return Sample(at=_docker_time(read.encode()), cpu_seconds=cpu_ns / 1e9, memory_mib=used / (1 << 20))


_seconds_cache: dict[bytes, int] = {}


class _RepeatFilter:
    """Drops entries a follow returns twice. The engine stamps each stream's entries in
    the order it reads them, so within a stream an entry older than the last one
    passed on, or as old and the same, was passed on already. (Were the host's clock
    stepped back, entries would be dropped until it caught up: clocks are slewed.)

    One exception: the pieces of a line longer than the engine's piece all carry the
    line's stamp, and a line of one repeated character has identical pieces; a piece
    the same as the entry just passed is the line going on, not a repeat."""

    def __init__(self):
        self.last_at: dict[int, int] = {}  # per stream, the stamp (ns) of the last entry passed on
        self.texts: dict[int, list[bytes]] = {}  # and the entries passed on with that stamp

    def seen(self, stream: int, stamp: bytes, text: bytes) -> bool:
        return self.seen_at(stream, _docker_nanoseconds(stamp), text)

    def seen_at(self, stream: int, at: int, text: bytes) -> bool:
        last_at = self.last_at.get(stream, -1)
        if at < last_at:
            return True
        if at > last_at:
            self.last_at[stream], self.texts[stream] = at, [text]
            return False
        texts = self.texts[stream]
        if text in texts and not (_is_piece(text) and texts[-1] == text):
            return True
        texts.append(text)
        return False


def _is_piece(text: bytes) -> bool:
    """A piece of a longer line: exactly the engine's piece size, not ended."""
    return len(text) == ENGINE_PIECE_BYTES and not text.endswith(b"\n")


def _body_blocks(response) -> Iterator[bytes]:
    """The body of a streamed response as it comes, in blocks of whatever has arrived
    (up to READ_BLOCK_BYTES): one read of the socket for many of the engine's small
    chunks, where reading through the HTTP client costs several calls a chunk."""
    inner = getattr(response.raw, "_fp", None)  # http.client's response, under urllib3's
    buffered = getattr(inner, "fp", None)
    if not (getattr(inner, "chunked", False) and inner.chunk_left is None and hasattr(buffered, "read1")):
        # Not a chunked body untouched yet: the client reads it its own way.
        while block := response.raw.read1(READ_BLOCK_BYTES):
            yield block
        return
    body = _Dechunker()
    while not body.ended:
        raw = buffered.read1(READ_BLOCK_BYTES)
        if not raw:
            return  # the engine ended the follow (it does on rotating its file): read on from here
        block = body.feed(raw)
        if block:
            yield block
        if len(raw) < READ_BLOCK_BYTES // 4:
            time.sleep(GATHER_SECONDS)  # a trickle: let more come, for one read of it all


class _Dechunker:
    """The data of an HTTP/1.1 chunked body (RFC 9112 §7.1), from its bytes as they
    come, cut anywhere. Trailers after the last chunk are not read."""

    def __init__(self):
        self.rest = b""  # a chunk's size line not yet whole
        self.need = 0  # bytes of the current chunk still to come, with its closing CRLF
        self.ended = False

    def feed(self, raw: bytes) -> bytes:
        buf = self.rest + raw if self.rest else raw
        end = len(buf)
        pos, need = 0, self.need
        out = []
        while True:
            if need:
                if end - pos >= need:
                    if need > 2:
                        out.append(buf[pos:pos + need - 2])
                    pos += need
                    need = 0
                else:
                    if need > 2 and pos < end:
                        out.append(buf[pos:pos + min(end - pos, need - 2)])
                    need -= end - pos
                    pos = end
                    break
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.ended = True
                break
            need = size + 2
        self.rest, self.need = buf[pos:] if not self.ended else b"", need
        if len(self.rest) > 4096:
            raise StreamBroke("a chunk's size line is longer than 4 KiB")
        return b"".join(out)


class _Attachment:
    """An attach to a run's main process for its output: the engine's client, the
    socket, how much of the output it may read (_log_cap_bytes), and whether the
    output is held (read no further) for a follow to come."""

    def __init__(self, client, sock, container_id: str, log_bytes: int, origin: bytes = b""):
        self.client, self.sock, self.container_id, self.log_bytes = client, sock, container_id, log_bytes
        self.origin = origin  # the run's origin mark (gate_script), its first output on each stream
        self.raw = plain_socket(sock)
        self.raw.settimeout(None)
        self.holding = False
        self.closed = False

    def close(self) -> None:
        """Detach (the engine then lets the run's output go on without it); again: nothing."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
        for close in (self.sock.close, self.client.close):
            with contextlib.suppress(OSError):
                close()


class _AttachedEntries:
    """The entries of the engine's log, out of an attach's output (the multiplexed
    stream: an 8-byte header, then a piece of output as the process wrote it), cut
    as the engine cuts its log: a line each, a line longer than ENGINE_PIECE_BYTES
    in pieces of that size, and at the end what is left unended. So each frame's
    cursor, the count of each stream's entries so far (LogPosition.attached), is
    also a place in the engine's log that a follow can go on from."""

    def __init__(self, origin: bytes = b""):
        self.rest = b""  # a multiplexed frame not yet whole
        self.open = [b"", b""]  # per stream, a line begun, shorter than a piece
        self.counts = [0, 0]  # per stream, the entries so far
        self.marks = [origin, origin]  # per stream, the origin mark (gate_script) still to come: counted, not shown
        self.last_at = 0.0  # when the last block came

    def frames(self, block: bytes, at: float) -> list[LogFrame | LineRun]:
        """The entries `block` ends, the usual run of short lines as a LineRun."""
        buf = self.rest + block if self.rest else block
        end, pos = len(buf), 0
        self.last_at = at
        out: list[LogFrame | LineRun] = []
        unpack, stream_of = _FRAME_HEADER.unpack_from, STREAM_OF_FRAME.get
        stream, parts = 0, []  # consecutive pieces of one stream are cut as one
        while end - pos >= 8:
            kind, length = unpack(buf, pos)
            after = pos + 8 + length
            if after > end:
                break
            this = stream_of(kind, 0)
            if this != stream and parts:
                self._cut(stream, parts, at, out)
                parts = []
            stream = this
            parts.append(buf[pos + 8:after])
            pos = after
        if parts:
            self._cut(stream, parts, at, out)
        self.rest = buf[pos:]
        return out

    def _cut(self, stream: int, parts: list[bytes], at: float, out: list) -> None:
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        if self.open[stream]:
            data = self.open[stream] + data
        mark = self.marks[stream]
        if mark:
            self.marks[stream] = b""
            if self.counts[stream] == 0 and data.startswith(mark):  # the stream's first entry, as in the engine's log
                self.counts[stream] = 1
                data = data[len(mark):]
                if not data:
                    return
        other = self.counts[1 - stream]
        step, base = (1 << LogPosition.STREAM_BITS, LogPosition.ATTACH_BIT | other) if stream == 0 else (
            1, LogPosition.ATTACH_BIT | (other << LogPosition.STREAM_BITS))
        count = self.counts[stream]
        new_frame = tuple.__new__  # a LogFrame without its Python-level __new__
        piece = ENGINE_PIECE_BYTES
        returns = b"\r" in data
        if not returns:
            # Lines with their newlines, as the frames hold them (splitlines also splits at \r).
            lines = data.splitlines(keepends=True)
            tail = lines.pop() if lines and not data.endswith(b"\n") else b""
        else:
            lines = [line + b"\n" for line in data.split(b"\n")]
            tail = lines.pop()[:-1]
        if len(tail) < piece and (len(data) < piece or max(map(len, lines), default=0) <= piece):  # the usual: no line to cut
            if lines and not returns:  # one LineRun for them all, their cursors counted up by `step`
                out.append(LineRun(data[:len(data) - len(tail)] if tail else data, len(lines),
                                   base + (count + 1) * step, step, at, stream))
            else:
                cursors = range(base + (count + 1) * step, base + (count + len(lines) + 1) * step, step)
                out.extend(map(new_frame, repeat(LogFrame), zip(cursors, repeat(at), repeat(stream), lines)))
            count += len(lines)
        else:
            lines = [line[:-1] for line in lines]
            for line in lines:
                whole = len(line) - len(line) % piece
                for start in range(0, whole, piece):
                    count += 1
                    out.append(new_frame(LogFrame, (base + count * step, at, stream, line[start:start + piece])))
                count += 1
                out.append(new_frame(LogFrame, (base + count * step, at, stream, line[whole:] + b"\n")))
            while len(tail) >= piece:
                count += 1
                out.append(new_frame(LogFrame, (base + count * step, at, stream, tail[:piece])))
                tail = tail[piece:]
        self.open[stream] = tail
        self.counts[stream] = count

    def end(self, at: float) -> list[LogFrame]:
        """The lines left unended when the output ended: an entry each, as the engine makes them."""
        out = []
        for stream in (0, 1):
            if self.open[stream]:
                self.counts[stream] += 1
                out.append(LogFrame(LogPosition.attached(*self.counts), at, stream, self.open[stream] + b"\n"))
                self.open[stream] = b""
        return out


def _log_cap_bytes(attrs: dict) -> int:
    """How much of a container's log an attach may read with the engine surely still
    keeping its first entry: all its files but the one being written (log_config),
    less what the engine may hold for the attach meanwhile (ATTACH_SLACK_BYTES)."""
    config = (attrs.get("HostConfig", {}).get("LogConfig") or {}).get("Config") or {}
    size, files = config.get("max-size", ""), config.get("max-file", "")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        size_bytes = int(size[:-1]) * units[size[-1].lower()] if size[-1:].isalpha() else int(size)
        kept = max(int(files) - 1, 1) * size_bytes
    except (ValueError, KeyError):
        kept = max(settings.RUNYARD_DOCKER_LOG_MAX_FILES - 1, 1) * (settings.RUNYARD_DOCKER_LOG_MAX_SIZE_MB << 20)
    return kept - ATTACH_SLACK_BYTES


class _FrameCutter:
    """Log frames out of the body of a logs request (the engine's multiplexed stream:
    an 8-byte header, then `stamp text`), block by block, each a LogFrame with the
    cursor after it; what a follow returned before (_RepeatFilter, LogPosition) is
    left out."""

    def __init__(self, position: "LogPosition", origin: bytes = b""):
        self.position = position
        self.repeats = _RepeatFilter()
        self.rest = b""
        # The run's origin mark; whether the log's first entry, one of the two marks, is
        # yet to come (a follow from the start); the streams whose mark may yet come, and
        # until when (ns): a mark is printed before any of the run's lines, so it comes
        # within MARGIN_SECONDS of the first line this follow sees.
        self.origin, self.first = origin, bool(origin) and position.since == 0
        self.marks, self.marks_by = ({0, 1} if origin else set()), 0
        # A follow resumed by time owes `skip` entries read before, all stamped within
        # MARGIN_SECONDS of `since` (LogPosition.take): its first entry stamped later
        # means the engine dropped them (and maybe more) meanwhile.
        self.resumed = position.stored is None and position.since > 0 and position.skip > 0

    def _shown(self, nanoseconds: int, stream: int, text: bytes) -> bool:
        """Whether an entry the position takes is shown: not an origin mark, nor one
        stamped no later than a lost head's resume time. The log's first entry not a
        mark means the engine dropped the log's head: raised, for a position from an
        attach's counts; LOST_NOTICE owed, for one from the start. So is it owed where
        a follow resumed by time finds the entries it owes gone (none is skipped)."""
        position = self.position
        if self.resumed:
            self.resumed = False
            if nanoseconds // 1_000_000_000 > position.since + LogPosition.MARGIN_SECONDS:
                position.skip, position.lost = 0, True
        if self.first:
            self.first = False
            if text != self.origin:
                if position.stored is not None:
                    raise LogHeadLost()
                position.lost = True
                self.marks.clear()
        if self.marks:
            if stream in self.marks:
                self.marks.discard(stream)
                if text == self.origin:
                    return False
            if not self.marks_by:
                self.marks_by = nanoseconds + LogPosition.MARGIN_NS
            elif nanoseconds > self.marks_by:
                self.marks.clear()
        if position.after_ns:
            if nanoseconds <= position.after_ns:
                return False
            if nanoseconds > position.after_ns + LogPosition.MARGIN_NS:
                position.after_ns = 0  # well past it: the entries of both streams are in order again
        return True

    def frames(self, block: bytes) -> list[LogFrame]:
        buf = self.rest + block if self.rest else block
        end = len(buf)
        pos = 0
        out = []
        position, unpack, stream_of, is_piece = self.position, _FRAME_HEADER.unpack_from, STREAM_OF_FRAME.get, _is_piece
        repeats = self.repeats
        last_at, texts_at = repeats.last_at, repeats.texts
        seconds_of, scale = _seconds_cache.get, _FRACTION_SCALE
        count_bits, count_max, margin = LogPosition.COUNT_BITS, (1 << LogPosition.COUNT_BITS) - 1, LogPosition.MARGIN_SECONDS
        append, new_frame = out.append, tuple.__new__  # a LogFrame without its Python-level __new__
        # The position's fields as locals (LogPosition.take for the usual entry, inline);
        # put back before a call of take() and at the end.
        since, count, skip, recent = position.since, position.count, position.skip, position.recent
        owing = position.stored is not None  # passing over what an attach stored (LogPosition)
        screening = bool(self.marks or self.resumed or position.after_ns or position.lost)  # _shown asks of each entry
        while end - pos >= 8:
            kind, length = unpack(buf, pos)
            after = pos + 8 + length
            if after > end:
                break
            stamp, _, text = buf[pos + 8:after].partition(b" ")
            pos = after
            stream = stream_of(kind, 0)
            # The usual stamp, 2026-11-25T22:05:29.123456789Z, of a second seen before:
            # as _docker_stamp reads it, without the calls.
            second = seconds_of(stamp[:19])
            fraction = stamp[20:-1]
            if (second is not None and 0 < len(fraction) <= 9 and stamp[19:20] == b"." and stamp[-1:] == b"Z"
                    and fraction.isdigit()):
                part = int(fraction) * scale[len(fraction)]
                nanoseconds, at = second * 1_000_000_000 + part, second + part / 1e9
            else:
                second, nanoseconds, at = _docker_stamp(stamp)
            if nanoseconds > last_at.get(stream, -1):  # the usual entry: later than the last (_RepeatFilter)
                last_at[stream], texts_at[stream] = nanoseconds, [text]
            elif repeats.seen_at(stream, nanoseconds, text):
                continue  # the engine sent it again (it does, following across a rotation)
            if skip or owing or screening or second < since or second - margin > since:
                position.count = count
                shown = self._shown(nanoseconds, stream, text) if screening else True
                before = position.encode() if position.lost else 0
                taken = position.take(second, stream)
                since, count, skip, recent = position.since, position.count, position.skip, position.recent
                owing = position.stored is not None
                if not (taken and shown):
                    continue  # read before this follow began, stored from an attach, or not the run's
                if position.lost:  # the first entry after a lost head: say so, where the lines are missing
                    position.lost = False
                    append(new_frame(LogFrame, (before, at, 1, LOST_NOTICE)))
                screening = bool(self.marks or position.after_ns)
            else:  # LogPosition.take of an entry within the resume stretch, not a replay
                count += 1
                recent[second] = recent.get(second, 0) + 1
            if not text.endswith(b"\n") and not is_piece(text):
                text += b"\n"
            if owing:
                cursor = position.encode()
            else:
                read = count + skip
                cursor = (since << count_bits) | (read if read < count_max else count_max)
            append(new_frame(LogFrame, (cursor, at, stream, text)))
        position.count = count
        self.rest = buf[pos:]
        return out


_FRACTION_SCALE = [10 ** (9 - digits) for digits in range(10)]  # RFC 3339 "nano" drops trailing zeros
_FRAME_HEADER = struct.Struct(">BxxxL")


def _docker_stamp(stamp: bytes) -> tuple[int, int, float]:
    """A docker timestamp's whole second, nanoseconds and unix time (as _docker_second,
    _docker_nanoseconds and _docker_time), read once."""
    whole, _, fraction = stamp.rstrip(b"Z").partition(b".")
    seconds = _seconds_cache.get(whole)
    if seconds is None:
        at = _docker_time(whole)
        seconds = int(at)
    digits = fraction[:9].ljust(9, b"0")  # RFC 3339 "nano" drops trailing zeros
    nanoseconds = seconds * 1_000_000_000 + (int(digits) if digits.isdigit() else 0)
    return seconds, nanoseconds, seconds + (float(b"0." + fraction) if fraction.isdigit() else 0.0)


def _docker_nanoseconds(stamp: bytes) -> int:
    whole, _, fraction = stamp.rstrip(b"Z").partition(b".")
    digits = fraction[:9].ljust(9, b"0")  # RFC 3339 "nano" drops trailing zeros
    return _docker_second(whole) * 1_000_000_000 + (int(digits) if digits.isdigit() else 0)


def _docker_second(stamp: bytes) -> int:
    """The whole second of a docker timestamp, exactly (a float of the whole time can round up)."""
    return int(_docker_time(stamp.partition(b".")[0]))


def _docker_time(stamp: bytes) -> float:
    """b"2026-11-25T22:05:29.123456789Z" -> unix time, without a datetime per line."""
    whole, _, fraction = stamp.rstrip(b"Z").partition(b".")
    seconds = _seconds_cache.get(whole)
    if seconds is None:
        try:
            d, t = whole.split(b"T")
            year, month, day = (int(x) for x in d.split(b"-"))
            hour, minute, second = (int(x) for x in t.split(b":"))
            seconds = calendar.timegm((year, month, day, hour, minute, second))
        except ValueError:
            return 0.0
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        _seconds_cache[whole] = seconds
    return seconds + (float(b"0." + fraction) if fraction.isdigit() else 0.0)


def runyard_dir_mount() -> Mount:
    """RUNYARD_DIR: a small tmpfs, as a volume of the local driver rather than a plain
    tmpfs mount, so that the engine's archive API sees into it (main_exit_code). It
    goes with the container (removed with v=True; Swarm removes a task's volumes)."""
    options = {"type": "tmpfs", "device": "tmpfs", "o": "mode=1777,size=1m"}
    return Mount(RUNYARD_DIR, None, type="volume", driver_config=DriverConfig("local", options))


def export_folders_tar(exports) -> bytes:
    """Every export path as an empty folder anyone in the container may write to (the
    image's user may not be root), as a tar for put_archive at /."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_export_folders(tar, exports)
    return buffer.getvalue()


def _add_export_folders(tar: tarfile.TarFile, exports) -> None:
    for path in exports:
        if path.strip("/"):
            # The folder only: the engine makes missing folders above it and leaves
            # existing ones as the image has them (a user's home stays theirs).
            folder = tarfile.TarInfo(path.strip("/"))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o777
            tar.addfile(folder)


def _reporter_tar(data: bytes) -> bytes:
    """The in-run reporter module as a tar of one file, runyard.py, for its volume."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("runyard.py")
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


class DockerTerminal:
    """A shell exec'd with a TTY (raw bytes both ways), or an attach to the main
    process (multiplexed output frames; typed lines to its stdin, Ctrl-C a SIGINT)."""

    writable = True

    def __init__(self, client, sock, exec_id: str | None, marker: str = "", container_id: str = ""):
        self.client, self.exec_id, self.marker, self.container_id = client, exec_id, marker, container_id
        self.sock = plain_socket(sock)
        self.sock.settimeout(None)
        self.keyboard = AttachedInput() if exec_id is None else None
        self.ended_with: int | None = None  # the shell's exit code, read at close

    def read(self) -> bytes:
        try:
            if self.keyboard is None:
                return self.sock.recv(65536)
            while True:
                header = self._exactly(8)
                if len(header) < 8:
                    return b""
                length = struct.unpack(">BxxxL", header)[1]
                if length:
                    # No TTY wrote these lines: a terminal needs its carriage returns.
                    return self._exactly(length).replace(b"\n", b"\r\n")
        except OSError:
            return b""

    def _exactly(self, size: int) -> bytes:
        return recv_exactly(self.sock, size)

    def watch_socket(self) -> socket.socket | None:
        """A shell's output, for an event loop to read as it comes (terminal.sessions):
        a duplicate of its plain socket, read with MSG_DONTWAIT. The duplicate is the
        loop's to close, after it stops watching, so close() here never pulls a file
        number from under the loop. None for an attach (framed output, read by a
        thread) and for a TLS socket (which buffers what the loop cannot see)."""
        if self.keyboard is not None or isinstance(self.sock, ssl.SSLSocket) or not isinstance(self.sock, socket.socket):
            return None
        return self.sock.dup()

    def write_now(self, data: bytes) -> int:
        """A shell's keystrokes, sent from the caller's event loop as far as the socket
        takes them without waiting: how many bytes went (write() sends the rest)."""
        if self.keyboard is not None:
            return 0  # an attach gathers typed lines and echoes them: write()
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError, ValueError):  # ValueError: a TLS socket takes no flags
            return 0

    def write(self, data: bytes) -> bytes:
        if self.keyboard is None:
            self.sock.sendall(data)
            return b""
        line, echo, interrupt = self.keyboard.feed(data)
        if line:
            self.sock.sendall(line)
        if interrupt:
            # To docker-init, which passes it to the main process's group (SIGNAL_THE_GROUP).
            try:
                self.client.api.kill(self.container_id, signal="SIGINT")
            except (APIError, DockerException) as exc:
                return echo + f"[could not interrupt the run: {getattr(exc, 'explanation', None) or exc}]\r\n".encode()
        return echo

    def resize(self, cols: int, rows: int) -> None:
        if self.exec_id:
            try:
                self.client.api.exec_resize(self.exec_id, height=rows, width=cols)
            except (APIError, DockerException):
                pass  # the shell has ended

    def close(self) -> None:
        """End it. Closing the stream alone would leave an exec'd shell running in the
        container (with the run's secrets in its environment): its processes are killed."""
        if self.exec_id:
            try:
                self.kill_shell()
            except (APIError, DockerException, OSError) as exc:  # the container is stopping, say
                # 409: the container is not running, and its shells ended with it.
                if getattr(exc, "status_code", None) != 409:
                    log.warning("could not end the shell of exec %s: %s", self.exec_id, exc)
            if self.ended_with is None:
                self.ended_with = self._exec_exit_code()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.client.close()

    def exit_code(self) -> int | None:
        return self.ended_with

    def _exec_exit_code(self, patience: float = 3.0) -> int | None:
        """The exec's ExitCode from the engine, once it says the exec has stopped (a shell
        just killed is reaped a moment later); None if it never says, or cannot be asked."""
        deadline = time.monotonic() + patience
        while True:
            try:
                found = self.client.api.exec_inspect(self.exec_id)
            except (APIError, DockerException, OSError):
                return None  # the container is gone, and the engine's record of the exec with it
            if not found.get("Running"):
                return found.get("ExitCode")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def shell_process(self) -> tuple[int, str] | None:
        """(host PID, container id) of the exec'd shell while it runs, from the engine's exec inspect."""
        found = self.client.api.exec_inspect(self.exec_id)
        pid = found.get("Pid") or 0
        return (pid, found.get("ContainerID", "")) if found.get("Running") and pid > 0 else None

    def kill_shell(self) -> None:
        """Kill the shell and everything it started (its jobs outlive it otherwise, in the
        container): from this host where the engine's processes are visible, else from
        inside the container."""
        try:
            found = self.client.api.exec_inspect(self.exec_id)
            pid, container_id = found.get("Pid") or 0, found.get("ContainerID", "")
            container = self.client.api.inspect_container(container_id)["State"]
        except NotFound:
            return  # the container is gone, and its processes with it
        if not container.get("Running"):
            return  # the container's processes have all ended with it
        if can_see(container.get("Pid") or 0, container_id):
            kill_terminal_processes(self.marker, pid or None, cgroup=container_id)
        else:
            self.kill_from_inside(container_id)

    def kill_from_inside(self, container_id: str) -> None:
        """Kill the shell's processes from inside its container, found by their marker:
        for an engine on another machine, whose processes this host's /proc does not show."""
        script = (f'for e in /proc/[0-9]*/environ; do if tr "\\0" "\\n" < "$e" 2>/dev/null | '
                  f'grep -qx "{TERMINAL_MARKER}={self.marker}"; then p="${{e#/proc/}}"; kill -KILL "${{p%/environ}}"; fi; done')
        # Not detached: returns once the script has run.
        self.client.api.exec_start(self.client.api.exec_create(container_id, ["/bin/sh", "-c", script])["Id"])
