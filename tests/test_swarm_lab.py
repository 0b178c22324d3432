"""The Swarm lab itself (lab/swarm.sh, through the swarm_lab fixture), as the swarm
executor's tests will find it: three Ready nodes named n1..n3, the registry's busybox
running on a worker, n3's fake GPUs, and a node whose engine crashes and comes back.
Real dockerds, as root; the GPUs are the only fake (there is none here)."""

import uuid

import pytest
from docker.types import Resources, RestartPolicy

from tests.conftest import wait_until

BUSYBOX = "runyard/busybox:latest"



@pytest.fixture
def one_off(swarm_lab):
    """Creates one-off services (one task, never restarted) of the lab registry's
    busybox on the manager; removes them after the test."""
    manager = swarm_lab.client("n1")
    created = []

    def create(command, **kwargs):
        service = manager.services.create(
            f"{swarm_lab.registry}/{BUSYBOX}", command, name=f"lab-test-{uuid.uuid4().hex[:8]}",
            restart_policy=RestartPolicy(condition="none"), **kwargs,
        )
        created.append(service)
        return service

    yield create
    for service in created:
        service.remove()


def finished_task(service, timeout: float = 30):
    def probe():
        tasks = service.tasks()
        if tasks and tasks[0]["Status"]["State"] in ("complete", "failed", "rejected"):
            return tasks[0]

    return wait_until(probe, timeout, f"service {service.name} finished")


def node_ids(swarm_lab) -> dict[str, str]:
    """name label -> swarm node ID, as the manager sees it."""
    return {node.attrs["Spec"]["Labels"]["name"]: node.id for node in swarm_lab.client("n1").nodes.list()}


def node_state(swarm_lab, node_id: str) -> str:
    return swarm_lab.client("n1").nodes.get(node_id).attrs["Status"]["State"]


def test_it_has_three_ready_nodes_named_n1_to_n3(swarm_lab):
    nodes = swarm_lab.client("n1").nodes.list()

    assert sorted(node.attrs["Spec"]["Labels"]["name"] for node in nodes) == ["n1", "n2", "n3"]
    assert {node.attrs["Status"]["State"] for node in nodes} == {"ready"}
    assert list(swarm_lab.nodes) == ["n1", "n2", "n3"]
    # each engine of lab.env is the node that carries its name; n1 manages
    ids = node_ids(swarm_lab)
    for name in swarm_lab.nodes:
        assert swarm_lab.client(name).info()["Swarm"]["NodeID"] == ids[name]
    roles = {node.attrs["Spec"]["Labels"]["name"]: node.attrs["Spec"]["Role"] for node in nodes}
    assert roles == {"n1": "manager", "n2": "worker", "n3": "worker"}
    assert swarm_lab.manager == swarm_lab.nodes["n1"]


def test_the_registry_image_runs_on_a_worker_that_never_had_it(swarm_lab, one_off):
    service = one_off(["sh", "-c", "echo hello from the lab"], constraints=["node.labels.name==n3"])

    task = finished_task(service)

    assert task["Status"]["State"] == "complete", task["Status"]
    assert task["NodeID"] == node_ids(swarm_lab)["n3"]
    container = swarm_lab.client("n3").containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container.logs() == b"hello from the lab\n"


def test_a_gpu_service_lands_on_n3_and_gets_a_fake_gpu(swarm_lab, one_off):
    service = one_off(["sh", "-c", "echo gpu=$DOCKER_RESOURCE_GPU"], resources=Resources(generic_resources={"gpu": 1}))

    task = finished_task(service)

    assert task["Status"]["State"] == "complete", task["Status"]
    assert task["NodeID"] == node_ids(swarm_lab)["n3"]
    container = swarm_lab.client("n3").containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    gpu = [line for line in container.attrs["Config"]["Env"] if line.startswith("DOCKER_RESOURCE_GPU=")]
    assert gpu in (["DOCKER_RESOURCE_GPU=GPU-fake-0"], ["DOCKER_RESOURCE_GPU=GPU-fake-1"])
    assert container.logs().decode() == f"gpu={gpu[0].split('=')[1]}\n"


# Last: it takes n2 away for a while (and brings it back).
def test_a_killed_engine_is_seen_down_and_comes_back_ready(swarm_lab):
    n2 = node_ids(swarm_lab)["n2"]
    old_pid = swarm_lab.engine_pid("n2")

    swarm_lab.kill_engine("n2")
    wait_until(lambda: node_state(swarm_lab, n2) == "down", 30, "n2 seen down by the manager")
    swarm_lab.start_engine("n2")

    wait_until(lambda: node_state(swarm_lab, n2) == "ready", 30, "n2 ready again")
    assert swarm_lab.engine_pid("n2") != old_pid
    assert swarm_lab.client("n2").info()["Swarm"]["LocalNodeState"] == "active"
