"""Clusters (SPEC §7): where a run runs, and what a run file may ask of one.

A cluster is one Docker engine (the embedded default's `default`: this console's own
engine, or local processes where none answers) or a Docker Swarm, whose manager
places each run on a node with room. Admins register clusters in the Django admin
(or with `manage.py register_cluster`); presets say which clusters offer them.
"""

import re

from runs.models import Cluster, ResourcePreset
from runs.spec import DEFAULT_CLUSTER


def get_cluster(name: str) -> Cluster | None:
    """The cluster of that name; `default` always exists (made on first use if need be)."""
    if name == DEFAULT_CLUSTER:
        return Cluster.objects.get_or_create(name=DEFAULT_CLUSTER, defaults={"kind": Cluster.Kind.ENGINE})[0]
    return Cluster.objects.filter(name=name).first()


def executor_name(cluster: Cluster, requested: str | None = None) -> str:
    """The executor that runs on the cluster: `swarm` on a Swarm; on one engine,
    `requested` (docker or local) or what this installation has."""
    if cluster.kind == Cluster.Kind.SWARM:
        return "swarm"
    if requested in ("docker", "local"):
        return requested
    from runs.executors import default_executor_name

    return default_executor_name()


def check_resources(spec: dict, preset: ResourcePreset | None) -> tuple[Cluster | None, list[dict]]:
    """The run file's cluster, and the errors (by field) of what it asks of it."""
    name = spec["resources"]["cluster"]
    cluster = get_cluster(name)
    if cluster is None:
        known = ", ".join(Cluster.objects.order_by("name").values_list("name", flat=True)) or DEFAULT_CLUSTER
        return None, [{"loc": "resources.cluster", "msg": f"unknown cluster {name!r} (known: {known})"}]
    errors = []
    if preset is not None and not offers(cluster, preset):
        offered = ", ".join(p.name for p in offered_presets(cluster))
        errors.append({
            "loc": "resources.preset",
            "msg": f"preset {preset.name!r} is not offered by cluster {name!r} (offered there: {offered or 'none'})",
        })
    return cluster, errors


def offers(cluster: Cluster, preset: ResourcePreset) -> bool:
    """A preset with no clusters chosen is offered by every cluster."""
    chosen = set(preset.clusters.values_list("pk", flat=True))
    return not chosen or cluster.pk in chosen


def offered_presets(cluster: Cluster) -> list[ResourcePreset]:
    return [p for p in ResourcePreset.objects.order_by("name").prefetch_related("clusters") if offers(cluster, p)]


def has_registry_host(image: str) -> bool:
    """Docker's own rule: the first part of the name is a registry host if it has a dot
    or a port, or is `localhost` (`runyard/python:3.11` has none; `ghcr.io/x/y` has one)."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def image_reference(cluster: Cluster, image: str) -> str:
    """The image as the cluster's nodes pull it: from the cluster's default registry
    unless the name says its own (so one run file works on one engine and on a cluster)."""
    if not cluster.registry or has_registry_host(image):
        return image
    return f"{cluster.registry.rstrip('/')}/{image}"


ENGINE_URL = re.compile(r"(unix|tcp|ssh)://\S+\Z")
REGISTRY_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z")


def cluster_errors(cluster: Cluster) -> dict[str, str]:
    """What is wrong with a cluster's settings, by field (the admin's form shows them there)."""
    errors = {}
    if cluster.kind == Cluster.Kind.SWARM and not cluster.manager:
        errors["manager"] = "a Swarm needs its manager's endpoint (unix:///path/docker.sock or tcp://host:2376)"
    if cluster.manager and not ENGINE_URL.match(cluster.manager):
        errors["manager"] = f"{cluster.manager!r} is not a Docker endpoint: unix:///path, tcp://host:port or ssh://user@host"
    if cluster.registry and not REGISTRY_HOST.match(cluster.registry):
        errors["registry"] = f"{cluster.registry!r}: a registry host, with a port if need be (registry.example.org:5000)"
    nodes = cluster.node_engines
    if not isinstance(nodes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in nodes.items()):
        errors["node_engines"] = 'an object of node name to engine URL: {"n1": "tcp://10.0.0.11:2376"}'
    else:
        wrong = [name for name, url in nodes.items() if not ENGINE_URL.match(url)]
        if wrong:
            errors["node_engines"] = f"not a Docker endpoint (unix://, tcp:// or ssh://): {', '.join(sorted(wrong))}"
    if cluster.kind == Cluster.Kind.ENGINE and (nodes or cluster.node_engine_port):
        errors["node_engines"] = "only a Swarm has nodes: a single engine is reached at its manager endpoint"
    return errors
