"""The run header's links to the run's http ports (templates/dashboard/_run_ports.html)."""

from django import template

from runs import access, ports

register = template.Library()


@register.filter
def http_ports(run, user) -> list[dict]:
    """The run's http ports: name, number, address, and whether it can be opened now by `user`."""
    declared = [port for port in ports.declared(run.spec) if port["type"] == "http"]
    if not declared:
        return []
    live = run.status in ports.OPEN_STATUSES
    allowed = access.may(user, access.Action.PORTS, run.team)
    return [{**port, "path": ports.port_path(run.pk, port["name"]), "open": live and allowed} for port in declared]
