"""The Swarm lab (lab/swarm.sh) as a pytest fixture: `swarm_lab` brings up a lab of
three nodes for the session, in a folder and namespaces of its own, and tears it down
after, when tests fail too, and at exit should the session be cut short.

It needs root (network namespaces, one dockerd per node). n3 announces two fake GPUs
(generic resource gpu=GPU-fake-0 and GPU-fake-1): there is no GPU here.
"""

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SWARM_SH = Path(__file__).resolve().parent.parent / "lab" / "swarm.sh"
BUSYBOX = "runyard/busybox:latest"
SH_ONLY = "runyard/sh-only:latest"  # nothing but /bin/sh (images/build.sh)


def swarm_sh(env: dict, *args: str) -> str:
    """Run lab/swarm.sh; its output, or an error that carries it."""
    done = subprocess.run([str(SWARM_SH), *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"lab/swarm.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def read_env(path: Path) -> dict[str, str]:
    """lab.env's KEY=VALUE lines (a value may be in double quotes)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value.strip('"') for key, value in pairs}


def running(pid: int) -> bool:
    """Is PID a live process? A zombie is not: the lab's engines are not our children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Lab:
    """A lab that is up: its folder, namespace prefix, registry, and the unix URLs of
    the manager's and every node's engine."""

    def __init__(self, env: dict[str, str], lab_env: dict[str, str]):
        self.env = env  # what lab/swarm.sh is run with
        self.dir = Path(lab_env["LAB_DIR"])
        self.ns = lab_env["LAB_NS"]
        self.manager = lab_env["LAB_MANAGER"]
        self.registry = lab_env["LAB_REGISTRY"]
        self.nodes = {name: lab_env[f"LAB_NODE_{name}"] for name in lab_env["LAB_NODES"].split()}
        self._clients = {}

    def client(self, node: str):
        """A docker client for that node's engine ("n1" is the manager's)."""
        import docker

        if node not in self._clients:
            self._clients[node] = docker.DockerClient(base_url=self.nodes[node])
        return self._clients[node]

    def engine_pid(self, node: str) -> int:
        return int((self.dir / node / "docker.pid").read_text())

    def kill_engine(self, node: str):
        """kill -9 the node's dockerd, as a crash would. Its containerd dies with it;
        its containers run on until the engine is started again."""
        pid = self.engine_pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node}'s dockerd ({pid}) outlived SIGKILL by 10 s")
            time.sleep(0.05)

    def cut_link(self, node: str, up: bool = False):
        """Unplug the node from the lab's network (or plug it back): the manager loses it,
        while its engine still answers on its socket, as a partition would look."""
        subprocess.run(["ip", "-n", f"{self.ns}-hub", "link", "set", f"v{node.replace('n', 'h', 1)}", "up" if up else "down"],
                       check=True)

    def start_engine(self, node: str):
        """Start the node's dockerd again, with the flags it had; returns once it answers."""
        swarm_sh(self.env, "start-node", node)

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients.clear()


@pytest.fixture(scope="session")
def swarm_lab(request):
    # here, not at the top: conftest loads this module
    from tests.conftest import missing

    if os.geteuid() != 0:
        missing("the Swarm lab needs root (network namespaces, one dockerd per node)")
    for tool in ("ip", "nsenter", "dockerd", "docker", "docker-registry"):
        if not shutil.which(tool):
            missing(f"{tool} is missing: the Swarm lab needs it (apt-get install -y docker.io docker-registry)")
    import docker

    try:
        docker.from_env().images.get(BUSYBOX)
    except docker.errors.DockerException:
        missing(f"the main Docker engine or its image {BUSYBOX} is missing: the lab copies it (images/build.sh)")

    subprocess.run([str(SWARM_SH.parent.parent / "images" / "build.sh"), SH_ONLY], check=True, stdout=subprocess.DEVNULL)
    # Short (unix socket paths hold 107 bytes) and unique, like the namespace prefix, so
    # the lab never meets `make cluster-lab`'s or another session's.
    lab_dir = tempfile.mkdtemp(prefix="rylab-", dir="/tmp")
    env = {**os.environ, "LAB_DIR": lab_dir, "LAB_NS": "ryt" + os.urandom(2).hex(), "NODES": "3",
           "LAB_FAKE_GPUS": "2", "LAB_IMAGES": f"{BUSYBOX} {SH_ONLY}"}
    lab = None

    def tear_down():
        atexit.unregister(tear_down)
        if lab:
            lab.close()
        swarm_sh(env, "down")
        if os.path.isdir(lab_dir):  # down removes the folder of a lab; mkdtemp's may be empty
            os.rmdir(lab_dir)

    # Both before `up`, so a lab that comes up halfway goes too.
    request.addfinalizer(tear_down)
    atexit.register(tear_down)
    swarm_sh(env, "up")
    lab = Lab(env, read_env(Path(lab_dir) / "lab.env"))
    return lab
