"""Runs as services of a Docker Swarm (SPEC §7): the Swarm's own scheduler places
each run on a node with room, and the run waits `pending` until one has it.

One service per run: one replica, restart condition `none`, its container labelled
`runyard.run=<id>`, the preset's CPUs, memory and GPUs (the generic resource `gpu`)
as both reservations and limits, the run's grace as the stop grace, the image pinned
by digest. Swarm has no exec, no stop with a grace that keeps the container, and
loses a task's logs when its service is removed (SWARM.md), so everything done to
the container itself (its log, its exit code, exports, terminals, the stop) goes to
the engine of the node it landed on, with the same code as on one engine
(runs.executors.docker); the manager is asked only where the run is and how it is.
Logs are read from the node's engine, not through the manager: the node's copy is
the one the one-engine code reads exactly once across restarts, and a follow through
the manager does not end when the task does.
"""

import io
import logging
import tarfile
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import docker
import requests
from django.conf import settings
from docker.errors import APIError, DockerException, NotFound
from docker.types import (
    ConfigReference, ContainerSpec, DriverConfig, Mount, Resources, RestartPolicy, ServiceMode, TaskTemplate,
)

from runs.clusters import image_reference
from runs.executors.base import REPORTER_FILE, ExecutorError, ExitInfo, ImagePull, Limits, Placement, script_for, with_reporter
from runs.executors.docker import (
    REPORTER_DIR, RUNYARD_DIR, SIGNAL_THE_GROUP, DockerExecutor, StreamBroke, export_folders_tar, log_config, pull_failure,
    runyard_dir_mount,
)

log = logging.getLogger(__name__)

# Task states (docker's swarm API), by what they mean for the run.
WAITING = {"new", "pending"}  # not placed yet: no node has room
PLACED = {"assigned", "accepted", "preparing", "ready", "starting"}  # on a node, pulling the image
ENGINE_TROUBLE = (DockerException, requests.exceptions.RequestException, OSError)
NODE_CHECK_SECONDS = 3.0
# In RUNYARD_DIR: a run with exports begins its commands once this exists (SwarmExecutor.begin).
BEGIN_FILE = "begin"


class NodeUnreachable(ExecutorError):
    def __init__(self, node: str, why: str):
        super().__init__(f"node {node}: {why}")
        self.why = why


class ManagerUnreachable(ExecutorError):
    """The cluster's manager does not answer: its runs wait, nothing is decided meanwhile."""

    retry = True


class NodeNotAnswering(ExecutorError):
    """A run's node does not answer yet: whether it is lost, the Swarm says in time."""

    retry = True


def waiting_reason(err: str) -> str:
    """'no suitable node (insufficient resources on 3 nodes)' -> 'waiting: insufficient resources on 3 nodes'."""
    err = err.strip()
    prefix = "no suitable node ("
    if err.startswith(prefix) and err.endswith(")"):
        err = err[len(prefix):-1]
    return f"waiting: {err}" if err else "waiting: the cluster is placing it"


def tls_config(tls_dir: str):
    if not tls_dir:
        return None
    folder = Path(tls_dir)
    return docker.tls.TLSConfig(
        client_cert=(str(folder / "cert.pem"), str(folder / "key.pem")), ca_cert=str(folder / "ca.pem"), verify=True,
    )


def pinned(reference: str, digest: str) -> str:
    """'10.77.0.1:5000/runyard/busybox:latest' + 'sha256:ab…' -> '10.77.0.1:5000/runyard/busybox@sha256:ab…'."""
    name = reference.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:  # a tag, not a registry's port
        name = name[:colon]
    return f"{name}@{digest}"


def export_mounts(run) -> list[Mount]:
    """Each export path as a volume of its own, so it exists before the first command:
    a Swarm starts the container itself, nothing can be copied in before. The engine
    gives a new volume what the image has at that path (its owner among it), else an
    empty folder owned by root, which `begin` opens to the image's user (who may not be
    root) before the commands begin. The archive API reads volumes, so exports see it
    all; the volume goes with the task's container."""
    return [Mount(path.rstrip("/"), None, type="volume") for path in run.spec.get("export", {})]


class NodeEngine(DockerExecutor):
    """The engine of one Swarm node, where a run's container lives: the one-engine
    executor, finding the container by its labels (Swarm names it after its task)."""

    def __init__(self, instance_id: str, node: str, base_url: str, tls=None):
        super().__init__(instance_id, base_url, tls)
        self.node = node
        self.connection_broke = False  # a follow of a container's log lost its engine mid-stream

    def _read_logs(self, run, container_id, start, opened=None, origin=b""):
        try:
            yield from super()._read_logs(run, container_id, start, opened, origin)
        except StreamBroke:
            self.connection_broke = True
            raise

    def open_exports(self, run) -> None:
        """Make the export folders writable by anyone in the running container, as one
        engine makes them before the start, then let the run's commands begin."""
        container = self._container(run)
        if container is None:
            raise ExecutorError(f"container disappeared on node {self.node} before its commands began")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(BEGIN_FILE))  # empty: its being there is the go-ahead
        try:
            container.put_archive("/", export_folders_tar(run.spec.get("export", {})))
            container.put_archive(RUNYARD_DIR, buffer.getvalue())
        except APIError as exc:
            raise ExecutorError(f"could not make the export folders on node {self.node}: {exc.explanation or exc}") from None
        except ENGINE_TROUBLE as exc:
            raise NodeUnreachable(self.node, f"its Docker engine does not answer ({type(exc).__name__})") from None

    def _container(self, run):
        labels = [f"runyard.instance={self.instance_id}", f"runyard.run={run.pk}"]
        try:
            found = self.client.containers.list(all=True, filters={"label": labels})
        except ENGINE_TROUBLE as exc:
            raise NodeUnreachable(self.node, f"its Docker engine does not answer ({type(exc).__name__})") from None
        return max(found, key=lambda c: c.attrs.get("Created", "")) if found else None


class SwarmExecutor:
    name = "swarm"
    places_runs = True  # a run waits `pending` for its cluster to find it room (runs.engine)

    def __init__(self, instance_id: str, cluster):
        self.instance_id, self.cluster = instance_id, cluster
        self._engines: dict[str, NodeEngine] = {}  # node id -> its engine
        self.interrupted: dict[int, str] = {}  # run id -> the node whose engine stopped answering while followed

    @cached_property
    def tls(self):
        return tls_config(self.cluster.tls_dir)

    @cached_property
    def manager(self) -> docker.DockerClient:
        try:
            return docker.DockerClient(base_url=self.cluster.manager, tls=self.tls or False, timeout=60)
        except ENGINE_TROUBLE as exc:  # a bad URL or TLS folder
            raise ManagerUnreachable(self._unreachable(exc)) from None

    def _unreachable(self, exc) -> str:
        return f"the manager of cluster {self.cluster.name} does not answer ({type(exc).__name__}: {str(exc)[:200]})"

    @contextmanager
    def _asking_manager(self):
        """The manager's answers pass; its silence is ManagerUnreachable (the run waits)."""
        try:
            yield
        except APIError:  # it answered, with an error: the caller's to judge
            raise
        except ENGINE_TROUBLE as exc:
            raise ManagerUnreachable(self._unreachable(exc)) from None

    def service_name(self, run) -> str:
        return f"runyard-{self.instance_id}-run-{run.pk}"

    def labels(self, run) -> dict[str, str]:
        return {"runyard.instance": self.instance_id, "runyard.run": str(run.pk)}

    # -- where the run is ---------------------------------------------------------

    def _task(self, run) -> dict | None:
        """The newest task of the run's service (there is one: restart condition none)."""
        try:
            with self._asking_manager():
                tasks = self.manager.api.tasks(filters={"service": self.service_name(run)})
        except NotFound:
            return None
        # A filter on a service that is gone can match another whose name begins alike.
        tasks = [t for t in tasks if t.get("Spec", {}).get("ContainerSpec", {}).get("Labels", {}).get("runyard.run") == str(run.pk)]
        return max(tasks, key=lambda t: t["CreatedAt"]) if tasks else None

    @cached_property
    def _nodes(self) -> dict[str, dict]:
        return {node["ID"]: node for node in self.manager.api.nodes()}

    def node_name(self, node_id: str) -> str:
        """The node's `name` label where the cluster sets one, else its hostname (SPEC §7)."""
        node = self._nodes.get(node_id)
        if node is None:
            self.__dict__.pop("_nodes", None)  # a node joined since: ask again
            node = self._nodes.get(node_id, {})
        return node.get("Spec", {}).get("Labels", {}).get("name") or node.get("Description", {}).get("Hostname") or node_id[:12]

    def node_state(self, node_id: str) -> str:
        """'ready', 'down', 'unknown' or 'disconnected', as the manager sees it now."""
        return self.manager.api.inspect_node(node_id).get("Status", {}).get("State", "unknown")

    def placement(self, run) -> Placement:
        task = self._task(run)
        if task is None:
            return Placement("gone", reason="its service is gone from the cluster")
        status = task.get("Status", {})
        state, err = status.get("State", ""), status.get("Err", "")
        node = self.node_name(task["NodeID"]) if task.get("NodeID") else ""
        if state in WAITING:
            return Placement("waiting", reason=waiting_reason(err))
        if state in PLACED:
            return Placement("initializing", node, f"placed on node {node}: {status.get('Message') or state}")
        if state == "running":
            return Placement("running", node)
        ran = state == "complete" or (state == "failed" and "non-zero exit" in err)
        reason = err or status.get("Message") or state
        if "No such image" in reason or "manifest unknown" in reason or "pull access denied" in reason:
            reason = f"image not found: {run.image_digest or run.image} could not be pulled on node {node} ({reason})"
        elif node:
            reason = f"{reason} (on node {node})"
        return Placement("ended", node, reason, ran=ran)

    def node_engine(self, run) -> NodeEngine:
        """The engine of the node the run's task is on."""
        task = self._task(run)
        if task is None or not task.get("NodeID"):
            raise ExecutorError("the run is not placed on a node")
        return self._engine_of(task["NodeID"])

    def _engine_of(self, node_id: str) -> NodeEngine:
        """The node's engine, one client for as long as this executor lives (a collector
        asks every second or so: for the exit code, the system metrics)."""
        if node_id not in self._engines:
            self._engines[node_id] = self._reach(node_id)
        return self._engines[node_id]

    def _reach(self, node_id: str) -> NodeEngine:
        name = self.node_name(node_id)
        url = self.cluster.node_engines.get(name) or self.cluster.node_engines.get(node_id)
        if not url and self.cluster.node_engine_port:
            address = self._nodes.get(node_id, {}).get("Status", {}).get("Addr", "")
            url = f"tcp://{address}:{self.cluster.node_engine_port}" if address else ""
        if not url:
            raise ExecutorError(f"cluster {self.cluster.name} does not say how to reach node {name}'s engine (node engines)")
        return NodeEngine(self.instance_id, name, url, self.tls)

    # -- the Executor protocol ------------------------------------------------------

    def prepare(self, run, pull: ImagePull | None = None) -> str:
        """The image pinned by digest, as the cluster's registry holds it (nothing is pulled
        here). With `pull`, the registry is asked with its login (or none) even for a
        reproduction: whoever runs a private image must be let in by its registry."""
        reference = image_reference(self.cluster, run.image)
        if run.image_digest and "@" in run.image_digest and pull is None:
            return run.image_digest  # a reproduction takes exactly its origin's image
        try:
            with self._asking_manager():
                found = self.manager.images.get_registry_data(reference, auth_config=pull.auth_config() if pull else None)
        except APIError as exc:
            if pull is not None:
                raise ExecutorError(pull_failure(reference, pull, exc)) from None
            where = f"registry {self.cluster.registry}" if self.cluster.registry and reference != run.image else "its registry"
            detail = getattr(exc, "explanation", None) or exc
            raise ExecutorError(f"image not found: {reference} is not in {where} ({detail})") from None
        if run.image_digest and "@" in run.image_digest:
            return run.image_digest
        return pinned(reference, found.id)

    def start(self, run, env: dict[str, str], limits: Limits, imports: list, pull: ImagePull | None = None) -> str:
        """Create the run's service (or find it created); Swarm places it when a node has room."""
        if imports:
            raise ExecutorError("imports are not available on a Swarm cluster yet")
        existing = self._service(run)
        if existing is not None:
            return existing.id
        # With exports, the commands wait for `begin` (the folders a Swarm makes are root's).
        script = script_for(run.spec, wait_for=BEGIN_FILE if run.spec.get("export") else "")
        reporter = self._reporter_config()
        container = ContainerSpec(
            image=run.image_digest or image_reference(self.cluster, run.image),
            command=["/bin/sh", "-c", script],
            env={**with_reporter(env, REPORTER_DIR), "RUNYARD_DIR": RUNYARD_DIR, **SIGNAL_THE_GROUP},
            labels=self.labels(run),
            mounts=[runyard_dir_mount(), *export_mounts(run)],
            configs=[ConfigReference(reporter.id, reporter.name, filename=f"{REPORTER_DIR}/runyard.py", mode=0o444)],
            stop_grace_period=int(run.termination_grace * 1e9),
            stop_signal="SIGTERM",
            init=True,
            cap_drop=["ALL"],
            open_stdin=True,  # for an attach (through the node's engine), as on one engine
        )
        nano_cpus, memory = int(limits.cpus * 1e9), limits.memory_mb * 1024 * 1024
        resources = Resources(
            cpu_limit=nano_cpus, mem_limit=memory, cpu_reservation=nano_cpus, mem_reservation=memory,
            generic_resources={"gpu": limits.gpus} if limits.gpus else None,
        )
        resources["Limits"]["Pids"] = 4096
        logs = log_config()
        template = TaskTemplate(
            container, resources=resources, restart_policy=RestartPolicy(condition="none"),
            log_driver=DriverConfig(logs["Type"], logs["Config"]),
        )
        try:
            with self._asking_manager(), self._manager_for(pull, container["Image"]) as manager:
                created = manager.api.create_service(
                    template, name=self.service_name(run), labels=self.labels(run), mode=ServiceMode("replicated", replicas=1),
                )
        except APIError as exc:
            if exc.status_code == 409:  # a retried start raced us to the name
                return self._service(run).id
            raise ExecutorError(f"service create error: {exc.explanation or exc}") from None
        return created["ID"]

    @contextmanager
    def _manager_for(self, pull: ImagePull | None, image: str):
        """The manager, to create a service whose nodes pull its image with `pull`'s login
        (`docker service create --with-registry-auth`): docker-py sends the login it holds
        for the image's registry with the service, so a client of its own logs in, used
        once and closed (the executor's shared one never holds a team's login). Untested
        on a real Swarm's private registry: the lab's registry has no login."""
        if pull is None or not pull.credential:
            yield self.manager
            return
        client = docker.DockerClient(base_url=self.cluster.manager, tls=self.tls or False, timeout=60)
        try:
            try:
                client.login(pull.username, pull.password, registry=pull.registry, reauth=True)
            except APIError as exc:
                raise ExecutorError(pull_failure(image, pull, exc)) from None
            yield client
        finally:
            client.close()

    def _service(self, run):
        try:
            with self._asking_manager():
                return self.manager.services.get(self.service_name(run))
        except NotFound:
            return None

    def _reporter_config(self):
        """`import runyard` inside a run (SPEC §4): the module, as a Swarm config named by its content."""
        import hashlib

        data = REPORTER_FILE.read_bytes()
        name = f"runyard-reporter-{hashlib.sha256(data).hexdigest()[:16]}"
        found = self.manager.configs.list(filters={"name": name})
        for config in found:
            if config.name == name:
                return config
        try:
            return self.manager.configs.create(name=name, data=data, labels={"runyard.reporter": "1"})
        except APIError as exc:
            if exc.status_code != 409:
                raise ExecutorError(f"could not store the reporter module on the cluster: {exc.explanation or exc}") from None
            return next(c for c in self.manager.configs.list(filters={"name": name}) if c.name == name)

    def begin(self, run) -> None:
        """The run's container runs on its node, its commands waiting where it has exports
        (run_script): make every export folder writable by the image's user, then let
        the commands begin. Done again, it changes nothing."""
        if not run.spec.get("export"):
            return  # its commands began with the container
        try:
            self.node_engine(run).open_exports(run)
        except NodeUnreachable as exc:
            raise NodeNotAnswering(str(exc)) from None

    def read_export(self, run, path: str):
        try:
            return self.node_engine(run).read_export(run, path)
        except NodeUnreachable as exc:
            raise ExecutorError(f"{exc}: the run's exports could not be copied") from None

    def follow_logs(self, run, cursor: int):
        """The container's log on its node's engine. A node whose engine stops answering,
        or that the manager reports down, is lost after RUNYARD_NODE_LOST_SECONDS."""
        task = self._task(run)
        if task is None or not task.get("NodeID"):
            raise ExecutorError("container disappeared: the run's service is gone from the cluster")
        node_id = task["NodeID"]
        engine = self._engine_of(node_id)
        failing_since = None
        checked = time.monotonic()
        while True:
            try:
                for frame in engine.follow_logs(run, cursor):
                    if frame is not None:
                        cursor, failing_since = frame.cursor, None
                    if time.monotonic() - checked > NODE_CHECK_SECONDS:
                        checked = time.monotonic()
                        self._check_node(node_id, engine.node)
                    yield frame
                if engine.connection_broke:
                    self.interrupted[run.pk] = engine.node  # its engine went away while the run ran
                return
            except NodeUnreachable as exc:
                self.interrupted[run.pk] = engine.node
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= settings.RUNYARD_NODE_LOST_SECONDS:
                    raise ExecutorError(f"node {engine.node} lost: {exc.why}") from None
                yield None
                time.sleep(1)
            except ExecutorError as exc:
                if f"node {engine.node}" in str(exc):
                    raise
                raise ExecutorError(f"{exc} on node {engine.node}") from None  # "container disappeared on node n2"

    def _check_node(self, node_id: str, name: str) -> None:
        try:
            state = self.node_state(node_id)
        except ENGINE_TROUBLE:
            return  # the manager itself is away: it decides nothing now
        if state not in ("ready",):
            # The Swarm stops the task when the node is back: the run ends now, saying why.
            raise ExecutorError(f"node {name} lost: the swarm manager reports it {state}")

    def main_exit_code(self, run) -> int | None:
        try:
            return self.node_engine(run).main_exit_code(run)
        except ExecutorError:
            return None

    def sample(self, run):
        """Read on the node's engine, as on one engine."""
        try:
            engine = self.node_engine(run)
            try:
                return engine.sample(run)
            finally:
                engine.client.close()  # a client a reading: its connections go with it
        except ExecutorError:
            return None

    def exit_info(self, run) -> ExitInfo:
        try:
            info = self.node_engine(run).exit_info(run)
        except NodeUnreachable:
            task = self._task(run)
            if task is None:
                return ExitInfo(None, "container disappeared")
            info = ExitInfo(task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode"), "")
        node = self.interrupted.get(run.pk)
        if node and not info.reason and info.exit_code in (137, 143):
            # A restarted engine kills what ran on it (Swarm has no live restore).
            return ExitInfo(info.exit_code, f"killed when node {node}'s Docker engine restarted")
        return info

    def exists(self, run) -> bool:
        """The run's service has a task that waits, starts, or has a container on its node."""
        task = self._task(run)
        if task is None:
            return False
        state = task.get("Status", {}).get("State", "")
        if state in WAITING or state in PLACED:
            return True
        try:
            return self._engine_of(task["NodeID"])._container(run) is not None
        except NodeUnreachable:
            return True  # whether the node is lost, follow_logs decides

    def stop(self, run, grace: float) -> None:
        """SIGTERM, the grace, SIGKILL through the node's engine (the container and its log
        stay for the collector); a run not started yet is simply removed."""
        task = self._task(run)
        if task is None:
            return
        if task.get("Status", {}).get("State") in ("running", "starting", "complete", "failed") and task.get("NodeID"):
            try:
                self._engine_of(task["NodeID"]).stop(run, grace)
                return
            except NodeUnreachable as exc:
                log.warning("run %s: %s; removing its service", run.pk, exc)
        self.remove(run)

    def remove(self, run) -> None:
        labels = [f"runyard.instance={self.instance_id}", f"runyard.run={run.pk}"]
        for service in self.manager.services.list(filters={"label": labels}):
            try:
                service.remove()
            except NotFound:
                pass

    def live_run_ids(self) -> set[int]:
        services = self.manager.services.list(filters={"label": f"runyard.instance={self.instance_id}"})
        return {int(s.attrs["Spec"]["Labels"]["runyard.run"]) for s in services
                if s.attrs["Spec"].get("Labels", {}).get("runyard.run", "").isdigit()}

    def open_terminal(self, run, mode: str, cols: int, rows: int):
        try:
            return self.node_engine(run).open_terminal(run, mode, cols, rows)
        except NodeUnreachable as exc:
            raise ExecutorError(str(exc)) from None

    def open_port(self, run, port: int):
        """Through the node's engine, as on one engine (runs.executors.docker)."""
        try:
            return self.node_engine(run).open_port(run, port)
        except NodeUnreachable as exc:
            raise ExecutorError(str(exc)) from None
