"""Register (or update) a cluster and the presets it offers, as the admin's Clusters
page does; `make cluster` registers its lab this way.

    manage.py register_cluster lab --swarm --manager unix:///…/n1/docker.sock \\
        --registry 10.77.0.1:5000 --node n1=unix:///…/n1/docker.sock --node n2=… \\
        --preset cpu-1:1:1024 --preset cpu-2:2:2048
    manage.py register_cluster lab --lab var/lab --preset cpu-1:1:1024   # reads the lab's lab.env
"""

import shlex
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from runs.models import Cluster, ResourcePreset


def read_lab_env(folder: Path) -> dict[str, str]:
    path = folder / "lab.env"
    if not path.is_file():
        raise CommandError(f"{path} is missing: is the lab up? (make cluster-lab)")
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key.removeprefix("export ").strip()] = (shlex.split(value) or [""])[0] if value.strip() else ""
    return values


def parse_preset(text: str) -> dict:
    """NAME:CPUS:MEMORY_MB[:GPUS[:CREDITS_PER_HOUR]]"""
    parts = text.split(":")
    if not 3 <= len(parts) <= 5 or not parts[0]:
        raise CommandError(f"--preset {text!r}: expected NAME:CPUS:MEMORY_MB[:GPUS[:CREDITS_PER_HOUR]]")
    try:
        cpus = Decimal(parts[1])
        memory_mb, gpus = int(parts[2]), int(parts[3]) if len(parts) > 3 else 0
        credits = Decimal(parts[4]) if len(parts) > 4 else cpus
    except (InvalidOperation, ValueError):
        raise CommandError(f"--preset {text!r}: CPUS and CREDITS are numbers, MEMORY_MB and GPUS whole numbers") from None
    if cpus <= 0 or memory_mb <= 0 or gpus < 0:
        raise CommandError(f"--preset {text!r}: CPUS and MEMORY_MB must be positive")
    return {"name": parts[0], "cpus": cpus, "memory_mb": memory_mb, "gpus": gpus, "credits_per_hour": credits}


class Command(BaseCommand):
    help = "Register or update a cluster (a single engine or a Docker Swarm) and the presets it offers."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--swarm", action="store_true", help="a Docker Swarm (else a single engine)")
        parser.add_argument("--manager", default="", help="the manager's Docker endpoint (unix:// or tcp://)")
        parser.add_argument("--tls-dir", default="", help="folder with ca.pem, cert.pem, key.pem")
        parser.add_argument("--registry", default="", help="the default registry, host[:port]")
        parser.add_argument("--node", action="append", default=[], metavar="NAME=URL", help="a node's own engine")
        parser.add_argument("--node-engine-port", type=int, default=None, help="other nodes: tcp://<addr>:PORT")
        parser.add_argument("--lab", default="", help="a lab made by lab/swarm.sh: its folder (reads lab.env)")
        parser.add_argument("--preset", action="append", default=[], metavar="NAME:CPUS:MEMORY_MB[:GPUS[:CREDITS]]",
                            help="a preset this cluster offers (created or updated)")

    def handle(self, name, swarm, manager, tls_dir, registry, node, node_engine_port, lab, preset, **options):
        nodes = {}
        if lab:
            env = read_lab_env(Path(lab).resolve())
            swarm, manager, registry = True, manager or env.get("LAB_MANAGER", ""), registry or env.get("LAB_REGISTRY", "")
            for node_name in env.get("LAB_NODES", "").split():
                nodes[node_name] = env.get(f"LAB_NODE_{node_name}", "")
        for item in node:
            node_name, sep, url = item.partition("=")
            if not sep or not node_name or not url:
                raise CommandError(f"--node {item!r}: expected NAME=URL")
            nodes[node_name] = url
        if swarm and not manager:
            raise CommandError("a Swarm cluster needs --manager (or --lab)")
        presets = [parse_preset(text) for text in preset]
        fields = {
            "kind": Cluster.Kind.SWARM if swarm else Cluster.Kind.ENGINE, "manager": manager, "tls_dir": tls_dir,
            "registry": registry, "node_engines": nodes, "node_engine_port": node_engine_port,
        }
        try:
            Cluster(name=name, **fields).full_clean(validate_unique=False)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())) from None
        with transaction.atomic():
            cluster, created = Cluster.objects.update_or_create(name=name, defaults=fields)
            for fields in presets:
                row, _ = ResourcePreset.objects.update_or_create(name=fields.pop("name"), defaults=fields)
                row.clusters.add(cluster)
        names = [fields.split(":")[0] for fields in preset]
        self.stdout.write(f"{'registered' if created else 'updated'} cluster {name} ({cluster.get_kind_display()})"
                          + (f", presets {', '.join(names)}" if names else ""))
        if names:
            self.stdout.write(f"  a run file with `resources: {{cluster: {name}, preset: {names[0]}}}` runs there")
