"""What users do to runs: create, terminate, reproduce. The API, the pages and the
admin all come through here."""

import json
from dataclasses import dataclass, field
from datetime import timedelta

import yaml
from django.db import transaction
from django.utils import timezone

from runs import clusters, credentials, imports, live, model_registry, ports, team_secrets
from runs.credits import team_credits_used
from runs.access import Action, NotAllowed, require, team_for_user
from runs.lifecycle import FINAL, IllegalTransition, transition
from runs.models import Membership, ResourcePreset, Role, Run, Status, Team
from runs.spec import SpecError, dump_spec_yaml, org_warnings, parse_spec_in_full, parse_spec_with_secrets, split_warnings
from runs.tasks import enqueue

DEFAULT_TEAM = "default"


class CreditLimitReached(SpecError):
    """The team has used its credits: a 400 that names the limit, not the spec (and
    lists whatever else is wrong with the file after it)."""

    def __init__(self, team: Team, used, other_errors=(), warnings=()):
        self.detail = f"team {team.name} has used {used} of its credit limit of {team.credit_limit} credits: no new run starts"
        limit = {"loc": "team.credit_limit", "msg": f"{self.detail} (a team admin can raise the limit)"}
        super().__init__([limit, *other_errors], warnings=list(warnings))


class RunNotFinal(Exception):
    def __init__(self, run: Run):
        super().__init__(f"run {run.pk} is {run.status}: only a completed, failed or terminated run can be reproduced")


def join_default_team(user, role: str = Role.MEMBER) -> Team:
    """Put a user who is in no team into `default`. Membership is given explicitly
    (SPEC §6): only `createtoken` without --team and the embedded default's first
    admin (`welcome`) call this; no request ever does."""
    team, _ = Team.objects.get_or_create(name=DEFAULT_TEAM)
    if not Membership.objects.filter(user=user).exists():
        Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
    return team


@dataclass
class RunPlan:
    """Everything creating a run decides before it writes anything: the frozen spec
    and what it is bound to. `warnings` are notes about the file ({"loc", "msg"})."""

    spec: dict
    team: Team
    preset: ResourcePreset
    cluster: object  # runs.models.Cluster
    imports: list = field(default_factory=list)  # what the run reads, as shown on it
    image_digest: str = ""
    executor: str = ""
    warnings: list = field(default_factory=list)
    sealed_secrets: bytes | str | None = None  # the inline secrets' values, encrypted (team_secrets)


def plan_run(
    *,
    user,
    source=None,
    frozen_spec: dict | None = None,
    team: Team | None = None,
    executor: str | None = None,
    reproduced_from: Run | None = None,
    inline_secrets: dict[str, str] | None = None,
) -> RunPlan:
    """Validate and resolve a run file as creating it would, writing nothing.

    `source` is what a user sent (YAML text or a parsed dict): its imports are
    resolved now (git ref to commit, dataset to version). `frozen_spec` is a spec
    frozen before (reproduce): used exactly as it is, with `reproduced_from`'s
    image digest and imports; what is gone since fails the run at initializing.
    The values of inline secrets come from `source` (or `inline_secrets`), else from
    `reproduced_from`. Raises SpecError with every problem found (`.warnings` too,
    and `.spec`, the file as read when it could be read); NotAllowed or
    Team.DoesNotExist when the user may not launch in `team`.
    """
    if team is None:
        team = team_for_user(user, None, Action.CHANGE)  # the user's first team where they may launch
    require(user, Action.CHANGE, team)
    credits_used = team_credits_used(team.pk) if team.credit_limit is not None else None
    over_limit = credits_used if credits_used is not None and credits_used >= team.credit_limit else None
    if frozen_spec is not None:
        spec, given, warnings = frozen_spec, dict(inline_secrets or {}), []
    else:
        try:
            spec, given, warnings = parse_spec_in_full(source)
        except SpecError as exc:
            raise _refusal(team, over_limit, exc.errors, exc.warnings, None) from None
    if over_limit is not None:  # early, so a team at its limit clones and resolves nothing
        raise _refusal(team, over_limit, [], warnings, spec)
    errors = []
    preset = ResourcePreset.objects.filter(name=spec["resources"]["preset"]).first()
    if preset is None:
        known = ", ".join(ResourcePreset.objects.order_by("name").values_list("name", flat=True))
        errors.append({"loc": "resources.preset", "msg": f"unknown preset {spec['resources']['preset']!r} (known: {known})"})
    cluster, cluster_errors = clusters.check_resources(spec, preset)
    errors += cluster_errors + ports.creation_errors(spec)
    errors += credentials.image_errors(spec, team, cluster)
    if cluster is not None and cluster.kind == cluster.Kind.SWARM and spec.get("import"):
        errors.append({"loc": "import", "msg": f"imports are not available on Swarm cluster {cluster.name!r} yet: "
                       "run this on a single-engine cluster, or copy the data into the image"})
    parsed = spec
    if reproduced_from is not None:
        read, image_digest = reproduced_from.imports, reproduced_from.image_digest
        warnings = reproduced_from.warnings
    else:
        spec, read, import_problems = imports.resolve(spec, team)
        import_errors, import_warnings = split_warnings(import_problems)
        errors += import_errors + team_secrets.missing_for_spec(spec, team)
        image_digest = ""
        warnings = warnings + (org_warnings(source, team.name) if source is not None else []) + import_warnings
    sealed, secret_errors = team_secrets.seal_inline_values(spec, given, reproduced_from)
    errors += secret_errors
    if errors:
        raise _refusal(team, None, errors, warnings, parsed)
    return RunPlan(spec=spec, team=team, preset=preset, cluster=cluster, imports=read, image_digest=image_digest,
                   executor=clusters.executor_name(cluster, executor), warnings=warnings, sealed_secrets=sealed)


def _refusal(team: Team, credits_used, errors: list, warnings: list, spec: dict | None) -> SpecError:
    refusal = CreditLimitReached(team, credits_used, errors, warnings) if credits_used is not None else SpecError(errors, warnings)
    refusal.spec = spec
    return refusal


def create_run(
    *,
    user,
    source=None,
    frozen_spec: dict | None = None,
    team: Team | None = None,
    executor: str | None = None,
    reproduced_from: Run | None = None,
    changes: dict | None = None,
    inline_secrets: dict[str, str] | None = None,
) -> Run:
    """Validate, resolve and freeze the spec (plan_run), then queue the run. Raises
    SpecError. The inline secrets' values are kept encrypted with the run, never in its spec."""
    plan = plan_run(user=user, source=source, frozen_spec=frozen_spec, team=team, executor=executor,
                    reproduced_from=reproduced_from, inline_secrets=inline_secrets)
    spec = plan.spec
    with transaction.atomic():
        # Checked again under the team's row lock, until the run is stored: resolving
        # the imports may have taken a while, and a limit lowered meanwhile (its PATCH
        # or admin save holds the same row) is honoured; creations of one team queue here.
        team = Team.objects.select_for_update().get(pk=plan.team.pk)
        _check_credit_limit(team)
        run = Run.objects.create(
            name=spec["name"],
            description=spec["description"],
            tags=spec["tags"],
            tag_index="".join(f"|{tag}" for tag in spec["tags"]) + "|" if spec["tags"] else "",
            spec=spec,
            image=spec["image"],
            owner=user,
            team=team,
            preset=plan.preset,
            reproduced_from=reproduced_from,
            changes=changes or {},
            imports=plan.imports,
            image_digest=plan.image_digest,
            cluster=plan.cluster,
            executor=plan.executor,
            warnings=plan.warnings,
            inline_secrets_ciphertext=plan.sealed_secrets,
        )
        model_registry.record_uses(run)
        transaction.on_commit(lambda: live.announce_created(run))
        enqueue("start", run.pk)
    return run


def dry_run(*, user, source, team: Team | None = None) -> dict:
    """What creating a run from `source` would do, without doing it (SPEC §8):
    {"valid", "spec", "errors", "warnings"}. `spec` is the resolved spec when valid,
    the file as read when only its resolution failed, else None. Nothing is written:
    the resolution runs in a transaction that is rolled back."""
    with transaction.atomic():
        try:
            plan = plan_run(user=user, source=source, team=team)
        except SpecError as exc:
            return {"valid": False, "spec": getattr(exc, "spec", None), "errors": exc.errors, "warnings": exc.warnings}
        finally:
            transaction.set_rollback(True)
    return {"valid": True, "spec": plan.spec, "errors": [], "warnings": plan.warnings}


def _check_credit_limit(team: Team) -> None:
    if team.credit_limit is not None and (used := team_credits_used(team.pk)) >= team.credit_limit:
        raise CreditLimitReached(team, used)


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


IDLE_TIMEOUT = "idle timeout"
MAX_RUNTIME = "max runtime"


def end_idle_runs_past_limit() -> int:
    """Terminate every idle run that has been idle longer than its team's idle limit,
    as a terminate does (the container gets SIGTERM, grace, SIGKILL; its exports are
    copied out first). The reconciler calls this; returns how many it ended."""
    now = timezone.now()
    ended = 0
    idle = Run.objects.filter(status=Status.IDLE, team__idle_limit_seconds__isnull=False, idle_at__isnull=False)
    for run in idle.select_related("team"):  # idle runs are few
        if run.idle_at + timedelta(seconds=run.team.idle_limit_seconds) > now:
            continue
        try:
            with transaction.atomic():
                transition(run.pk, Status.TERMINATED, reason=IDLE_TIMEOUT, only_from=[Status.IDLE],
                           stop_requested_at=now, stop_deadline=now + timedelta(seconds=run.termination_grace))
                enqueue("stop", run.pk)
        except IllegalTransition:  # someone terminated it first
            continue
        ended += 1
    return ended


def end_runs_past_max_runtime() -> int:
    """Terminate every interactive run (`interactive.max_runtime`) that has run that long
    since it started, running or idle, as a terminate does. The reconciler calls this;
    returns how many it ended."""
    now = timezone.now()
    ended = 0
    live = Run.objects.filter(status__in=[Status.RUNNING, Status.IDLE], started_at__isnull=False,
                              spec__interactive__max_runtime_seconds__isnull=False)
    for run in live.only("pk", "spec", "started_at"):  # interactive runs with a limit are few
        limit = (run.spec.get("interactive") or {}).get("max_runtime_seconds")
        if limit is None or run.started_at + timedelta(seconds=limit) > now:
            continue
        try:
            with transaction.atomic():
                transition(run.pk, Status.TERMINATED, reason=MAX_RUNTIME, only_from=[Status.RUNNING, Status.IDLE],
                           stop_requested_at=now, stop_deadline=now + timedelta(seconds=run.termination_grace))
                enqueue("stop", run.pk)
        except IllegalTransition:  # it ended, or someone terminated it, first
            continue
        ended += 1
    return ended


# What a reproduction may change; everything else (image, code, data) stays pinned.
REPRODUCE_CHANGES = ("env", "run", "resources")


def reproduce_run(run: Run, *, actor, overrides: dict | None = None) -> Run:
    """A new run from the same frozen spec, pointing back at this one: the same
    image digest, git commit, dataset version and code snapshot. `overrides` may
    replace env entries, the commands or the resources; the differences are
    recorded on the new run."""
    _require_launch_rights(run, actor)
    if run.status not in FINAL:
        raise RunNotFinal(run)
    spec, changes, given = run.spec, {}, {}
    if overrides:
        spec, given = _apply_overrides(run.spec, overrides)
        changes = {key: {"from": run.spec.get(key), "to": spec.get(key)} for key in REPRODUCE_CHANGES if spec.get(key) != run.spec.get(key)}
    return create_run(user=actor, frozen_spec=spec, team=run.team, executor=run.executor, reproduced_from=run,
                      changes=changes, inline_secrets=given)


def _apply_overrides(frozen: dict, overrides: dict) -> tuple[dict, dict[str, str]]:
    _check_override_shapes(overrides)
    # Validate the changed parts through the same parser as a new spec, in the user's shape.
    user_shape = yaml.safe_load(dump_spec_yaml(frozen))
    if "env" in overrides:
        merged_env = {**user_shape.get("env", {}), **overrides["env"]}
        user_shape["env"] = {k: v for k, v in merged_env.items() if v is not None}  # null removes a variable
    if "run" in overrides:
        user_shape["run"] = overrides["run"]
    if "resources" in overrides:
        user_shape["resources"] = {**user_shape.get("resources", {}), **(overrides["resources"] or {})}
    checked, inline_secrets = parse_spec_with_secrets(user_shape)
    # Imports stay exactly as frozen (the parser would see only their user-facing form).
    return {**checked, "import": frozen.get("import", {})}, inline_secrets


def _check_override_shapes(overrides) -> None:
    """The shape of each change, before it is merged into the spec: every wrong
    type is a SpecError naming its field (the parser then checks the values)."""
    if not isinstance(overrides, dict):
        raise SpecError([{"loc": "", "msg": "expected a mapping of changes, e.g. {\"env\": {\"K\": \"V\"}}"}])
    errors = [{"loc": str(key), "msg": f"cannot be changed when reproducing (only {', '.join(REPRODUCE_CHANGES)})"}
              for key in overrides if key not in REPRODUCE_CHANGES]
    env = overrides.get("env", {})
    if not isinstance(env, dict):
        errors.append({"loc": "env", "msg": "expected a mapping of variable names to values (null removes one)"})
    else:
        errors += [{"loc": f"env[{json.dumps(name, ensure_ascii=False)}]", "msg": "expected a string, {\"secret\": NAME}, {\"value\": ..., \"secret\": true} or null"}
                   for name, value in env.items() if not (value is None or isinstance(value, str | dict))]
    if "run" in overrides and not isinstance(overrides["run"], list):
        errors.append({"loc": "run", "msg": "expected a list of commands, e.g. [{\"command\": \"python train.py\"}]"})
    if not isinstance(overrides.get("resources") or {}, dict):
        errors.append({"loc": "resources", "msg": "expected a mapping, e.g. {\"preset\": \"cpu-small\"}"})
    if errors:
        raise SpecError(errors)


def _require_launch_rights(run: Run, user) -> None:
    require(user, Action.CHANGE, run.team)


__all__ = [
    "CreditLimitReached", "IllegalTransition", "NotAllowed", "RunNotFinal", "RunPlan", "SpecError",
    "create_run", "dry_run", "plan_run", "terminate_run", "reproduce_run",
]
