"""What users do to runs: create, terminate, reproduce. The API, the pages and the
admin all come through here."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from runs.executors import default_executor_name
from runs.lifecycle import FINAL, IllegalTransition, transition
from runs.models import Membership, ResourcePreset, Role, Run, Status, Team
from runs.spec import SpecError, parse_spec
from runs.tasks import enqueue

DEFAULT_TEAM = "default"
CLUSTERS = ("default",)


class NotAllowed(Exception):
    """The user may see the run but not do this to it (a viewer, say)."""


class RunNotFinal(Exception):
    def __init__(self, run: Run):
        super().__init__(f"run {run.pk} is {run.status}: only a completed, failed or terminated run can be reproduced")


def ensure_team(user) -> Team:
    """Every user belongs to at least one team; one with none joins `default`."""
    membership = Membership.objects.filter(user=user).select_related("team").order_by("created_at", "pk").first()
    if membership:
        return membership.team
    team, _ = Team.objects.get_or_create(name=DEFAULT_TEAM)
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": Role.MEMBER})
    return team


def membership_for(user, team: Team) -> Membership | None:
    return Membership.objects.filter(user=user, team=team).first()


def create_run(
    *,
    user,
    source=None,
    frozen_spec: dict | None = None,
    team: Team | None = None,
    executor: str | None = None,
    reproduced_from: Run | None = None,
) -> Run:
    """Validate, resolve and freeze the spec, then queue the run. Raises SpecError.

    `source` is what a user sent (YAML text or a parsed dict); `frozen_spec` is a
    spec this code froze before (reproduce), used exactly as it is.
    """
    spec = frozen_spec if frozen_spec is not None else parse_spec(source)
    team = team or ensure_team(user)
    membership = membership_for(user, team)
    if membership is None or not membership.can_launch:
        raise NotAllowed(f"you cannot launch runs in team {team.name}")
    errors = []
    preset = ResourcePreset.objects.filter(name=spec["resources"]["preset"]).first()
    if preset is None:
        known = ", ".join(ResourcePreset.objects.order_by("name").values_list("name", flat=True))
        errors.append({"loc": "resources.preset", "msg": f"unknown preset {spec['resources']['preset']!r} (known: {known})"})
    if spec["resources"]["cluster"] not in CLUSTERS:
        errors.append({"loc": "resources.cluster", "msg": f"unknown cluster {spec['resources']['cluster']!r} (known: default)"})
    if errors:
        raise SpecError(errors)
    with transaction.atomic():
        run = Run.objects.create(
            name=spec["name"],
            description=spec["description"],
            tags=spec["tags"],
            tag_index="".join(f"|{tag}" for tag in spec["tags"]) + "|" if spec["tags"] else "",
            spec=spec,
            image=spec["image"],
            owner=user,
            team=team,
            preset=preset,
            reproduced_from=reproduced_from,
            executor=executor or default_executor_name(),
        )
        enqueue("start", run.pk)
    return run


def terminate_run(run: Run, *, actor) -> Run:
    """Any live run → terminated, at once and exactly once. The container then gets
    SIGTERM, the run's grace period, SIGKILL, and is removed (runs.engine.stop_run)."""
    _require_launch_rights(run, actor)
    now = timezone.now()
    with transaction.atomic():
        run = transition(
            run.pk,
            Status.TERMINATED,
            actor=actor,
            reason=f"terminated by {actor.get_username()}",
            stop_requested_at=now,
            stop_deadline=now + timedelta(seconds=run.termination_grace),
        )
        enqueue("stop", run.pk)
    return run


def reproduce_run(run: Run, *, actor) -> Run:
    """A new run from the same frozen spec, pointing back at this one."""
    _require_launch_rights(run, actor)
    if run.status not in FINAL:
        raise RunNotFinal(run)
    return create_run(user=actor, frozen_spec=run.spec, team=run.team, executor=run.executor, reproduced_from=run)


def _require_launch_rights(run: Run, user) -> None:
    if user.is_superuser:
        return
    membership = membership_for(user, run.team)
    if membership is None or not membership.can_launch:
        raise NotAllowed("viewers cannot change runs")


__all__ = ["IllegalTransition", "NotAllowed", "RunNotFinal", "SpecError", "create_run", "terminate_run", "reproduce_run"]
