"""Executors run a run's main process: Docker containers, local processes where no
Docker engine is reachable, or services of a Docker Swarm (a cluster of kind swarm).
All implement runs.executors.base.Executor."""

import secrets
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError

# The executors of this installation's own machine; `swarm` is one per Swarm cluster.
EXECUTOR_NAMES = ("docker", "local")


@lru_cache(maxsize=1)
def instance_id() -> str:
    from runs.models import Installation

    if settings.RUNYARD_INSTANCE_ID:
        return settings.RUNYARD_INSTANCE_ID
    row = Installation.objects.first()
    if row is None:
        try:
            row = Installation.objects.create(instance_id=secrets.token_hex(4))
        except IntegrityError:
            row = Installation.objects.first()
    return row.instance_id


def executor_for(run):
    """The executor that runs `run`: on a Swarm, the one of the run's own cluster."""
    if run.executor == "swarm":
        from runs.models import Cluster

        return get_executor("swarm", Cluster.objects.get(pk=run.cluster_id))
    return get_executor(run.executor)


def swarm_executors() -> list:
    """One executor for each Swarm cluster, for the reconciler."""
    from runs.models import Cluster

    return [get_executor("swarm", cluster) for cluster in Cluster.objects.filter(kind=Cluster.Kind.SWARM)]


def get_executor(name: str, cluster=None):
    if name == "swarm":
        from runs.executors.swarm import SwarmExecutor

        return SwarmExecutor(instance_id(), cluster)
    if name == "docker":
        from runs.executors.docker import DockerExecutor

        return DockerExecutor(instance_id())
    if name == "local":
        from runs.executors.local import LocalExecutor

        return LocalExecutor(instance_id())
    raise ValueError(f"unknown executor {name!r}")


def default_executor_name() -> str:
    """The executor new runs get: the setting, or with "auto" Docker when it answers."""
    if settings.RUNYARD_EXECUTOR != "auto":
        return settings.RUNYARD_EXECUTOR
    from runs.executors.docker import engine_reachable

    return "docker" if engine_reachable() else "local"
