"""A run's ports (SPEC §8): what a run declares under `ports`, and who reaches which.

An `http` port of a running (or idle) run is served through the console at
/runs/{id}/ports/{name-or-port}/ (dashboard/ports.py), HTTP and websockets, to the
members and admins of the run's team (runs.access, Action.PORTS: viewers may not, an
app there acts inside the run as a terminal does; anyone else gets a 404, as for a
run that does not exist). The connection is made from inside the run
(executor.open_port), so the run itself still has no route out.

A `tcp` port has no such door: a raw TCP port cannot be told apart by path on the
console's one address. Unless the installation says otherwise (RUNYARD_TCP_PORTS=accept:
accepted, reachable only from inside the run), a run that declares one is refused at
creation, naming the port and what to do.
"""

from django.conf import settings

from runs import access
from runs.executors import executor_for
from runs.models import Run, Status

OPEN_STATUSES = (Status.RUNNING, Status.IDLE)  # the run's container (or process) is there


class PortUnavailable(Exception):
    """The run is visible to the user but this port cannot be served now: `status` is
    the HTTP status to answer with (404 no such port, 409 not now)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def port_path(run_id: int, name: str) -> str:
    return f"/runs/{run_id}/ports/{name}/"


def declared(spec: dict) -> list[dict]:
    return spec.get("ports", [])  # a spec frozen before ports existed has none


def find_port(spec: dict, key: str) -> dict | None:
    """The declared port named `key`, else the one whose number it is."""
    ports = declared(spec)
    found = next((port for port in ports if port["name"] == key), None)
    if found is None and key.isascii() and key.isdigit():
        found = next((port for port in ports if port["port"] == int(key)), None)
    return found


def creation_errors(spec: dict) -> list[dict]:
    """What this installation cannot honour in the spec's ports, by field."""
    if settings.RUNYARD_TCP_PORTS == "accept":
        return []
    return [
        {"loc": f"ports[{index}].type",
         "msg": f"tcp port {port['name']} ({port['port']}) cannot be reached through this console: only http ports are "
                f"served (at /runs/ID/ports/NAME/). Make it `type: http` if it speaks HTTP, or remove it; an admin can "
                f"set RUNYARD_TCP_PORTS=accept to run such files anyway, their tcp ports reachable only from inside the run"}
        for index, port in enumerate(declared(spec)) if port["type"] == "tcp"
    ]


def _listing(run: Run) -> str:
    ports = [f"{port['name']} ({port['port']}, {port['type']})" for port in declared(run.spec)]
    return f"it declares {', '.join(ports)}" if ports else "it declares no ports"


def port_for_user(user, run_id: int, key: str):
    """(run, port, executor) for a request to /runs/{run_id}/ports/{key}/. Run.DoesNotExist
    for a run the user cannot see; access.NotAllowed for a teammate whose role may not
    reach ports; PortUnavailable for a port that is not declared, not http, or a run
    that is not live."""
    run = access.run_for_user(user, run_id)
    try:
        access.require(user, access.Action.PORTS, run.team)
    except access.NotAllowed:
        raise access.NotAllowed(f"{access.role_in(user, run.team) or 'non-member'}s cannot reach the apps a run serves "
                                "on its ports: they act inside the run, as a terminal does") from None
    port = find_port(run.spec, key)
    if port is None:
        raise PortUnavailable(404, f"run #{run.pk} has no port {key!r}: {_listing(run)}")
    if port["type"] != "http":
        raise PortUnavailable(404, f"port {port['name']} of run #{run.pk} is a {port['type']} port: "
                                   "the console serves http ports only")
    if run.status not in OPEN_STATUSES:
        raise PortUnavailable(409, f"run #{run.pk} is {run.status}: its ports are served only while it runs")
    return run, port, executor_for(run)
