"""Who may do what, in one place (SPEC §3, §5, §6).

Everything a user reaches (a run, a dataset, a model, a code snapshot, a secret, a
credential, a team's settings) belongs to a team, and the user's role in that team decides:

    role        read   change (launch, terminate, upload, set)   terminal, ports   administer
    admin        yes    yes                                       yes               yes
    member       yes    yes                                       yes               no
    viewer       yes    no                                        no                no
    superuser: everything in every team. A deactivated user, or one in no team: nothing.

The lookups work like healthchecks' `_get_check_for_user`: they return the object,
raise the model's own DoesNotExist for anyone outside its team (a foreign object
looks exactly like a missing one), and raise NotAllowed (403) for a teammate whose
role forbids the action. The API, the pages, the websockets, the file downloads, the
terminal and the admin all ask here; nothing else writes the rule.
"""

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from django.db.models import QuerySet

from runs.models import CodeSnapshot, Credential, Dataset, Membership, Model, Role, Run, Team, TeamSecret


class Action(StrEnum):
    READ = "read"
    CHANGE = "change"
    TERMINAL = "terminal"
    PORTS = "ports"  # an app served from a run acts inside it (a Jupyter is a shell): as a terminal
    ADMINISTER = "administer"


ALLOWED: dict[str, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.MEMBER: frozenset({Action.READ, Action.CHANGE, Action.TERMINAL, Action.PORTS}),
    Role.VIEWER: frozenset({Action.READ}),
}

# What a refusal says the role cannot do.
_REFUSED = {
    Action.READ: "see anything in team {team}",
    Action.CHANGE: "launch or change anything in team {team}",
    Action.TERMINAL: "open a terminal in a run",
    Action.PORTS: "reach the apps a run serves on its ports (they act inside the run, as a terminal does)",
    Action.ADMINISTER: "change the settings of team {team}",
}


class NotAllowed(Exception):
    """The user sees the object but their role does not allow this: a 403.
    `loc` names the input at fault, when there is one (the API's errors[].loc)."""

    def __init__(self, message: str, loc: str = ""):
        super().__init__(message)
        self.loc = loc


def is_present(user) -> bool:
    """Signed in and active: anyone else reaches nothing."""
    return user is not None and user.is_authenticated and user.is_active


def role_in(user, team: Team | int) -> str | None:
    """The user's role in the team, None when not a member (superusers included)."""
    if not is_present(user):
        return None
    team_id = team if isinstance(team, int) else team.pk
    return Membership.objects.filter(user=user, team_id=team_id).values_list("role", flat=True).first()


def may(user, action: Action, team: Team | int) -> bool:
    if not is_present(user):
        return False
    if user.is_superuser:
        return True
    return action in ALLOWED.get(role_in(user, team), frozenset())


def require(user, action: Action, team: Team) -> None:
    """NotAllowed unless the user may; call it once the team is known to be visible."""
    if may(user, action, team):
        return
    role = role_in(user, team)
    who = f"{role}s" if role else "non-members"
    raise NotAllowed(f"{who} cannot {_REFUSED[action].format(team=team.name)}")


# ------------------------------------------------------------------ teams


def readable_teams(user) -> QuerySet[Team]:
    if not is_present(user):
        return Team.objects.none()
    if user.is_superuser:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user)


def readable_team_ids(user) -> set[int]:
    return set(readable_teams(user).values_list("pk", flat=True))


def administering(user) -> QuerySet[Membership]:
    """The user's memberships that administer their team (by role: superusers are staff
    and keep Django's own permissions in /admin/)."""
    if not is_present(user):
        return Membership.objects.none()
    roles = [role for role, actions in ALLOWED.items() if Action.ADMINISTER in actions]
    return Membership.objects.filter(user=user, role__in=roles)


def administered_team_ids(user) -> set[int]:
    """The teams whose admin page the user may manage in /admin/."""
    return set(administering(user).values_list("team_id", flat=True))


def memberships(user) -> QuerySet[Membership]:
    """The user's memberships, oldest first: the first is their default team."""
    if not is_present(user):
        return Membership.objects.none()
    return Membership.objects.filter(user=user).select_related("team").order_by("created_at", "pk")


def default_team(user, action: Action = Action.READ) -> Team | None:
    """The team a request that names none works in: the user's first team where
    the action is allowed. Never a team the user is not in, and never created."""
    for membership in memberships(user):
        if action in ALLOWED.get(membership.role, frozenset()):
            return membership.team
    return None


def team_for_user(user, name: str | None, action: Action = Action.READ) -> Team | None:
    """The team `name` (or the default one when no name is given) if the user may
    see it; Team.DoesNotExist for a team they are not in; NotAllowed when their role
    forbids the action. No name and no team of the user's: None for reads (they see
    nothing), NotAllowed naming `team` for anything else."""
    if name:
        team = readable_teams(user).filter(name=name).first()
        if team is None:
            raise Team.DoesNotExist(f"team {name!r} not found")
        require(user, action, team)
        return team
    team = default_team(user, action)
    if team is not None or action == Action.READ:
        return team
    some = default_team(user, Action.READ)
    if some is not None:
        require(user, action, some)  # a viewer: says what their role cannot do
    raise NotAllowed("you are in no team where you may do this: name one with ?team= or ask a team admin to add you", "team")


# ------------------------------------------------------------------ runs


def visible_runs(user) -> QuerySet[Run]:
    """Every run the user may read, the base of every list.

    By the ids of the user's teams, read first (one small query): with them, the
    database walks the runs' indexes newest first and stops at a page, where a join
    through the memberships made it read every run of the teams before sorting."""
    if not is_present(user):
        return Run.objects.none()
    runs = Run.objects.all()
    if not user.is_superuser:
        runs = runs.filter(team_id__in=sorted(Membership.objects.filter(user=user).values_list("team_id", flat=True)))
    return runs


def run_for_user(user, run_id: int, action: Action = Action.READ) -> Run:
    """The run, if the user may `action` it. Run.DoesNotExist for a run of another
    team, exactly as for one that does not exist; NotAllowed for a teammate's
    role that forbids the action."""
    if not is_present(user):
        raise Run.DoesNotExist("run not found")
    runs = Run.objects.select_related("owner", "team", "preset", "cluster").filter(pk=run_id)
    if not user.is_superuser:
        runs = runs.filter(team__memberships__user=user)  # one run by its key: the join costs nothing here
    run = runs.first()
    if run is None:
        raise Run.DoesNotExist("run not found")
    require(user, action, run.team)
    return run


# ------------------------------------------------------------------ what runs read


def _owned_by_team(model, user, team_name: str | None, action: Action, what: str, **lookup):
    """One object of `model` in the named (or default) team, found by `lookup`;
    model.DoesNotExist, saying `what`, when the user's team has none."""
    team = team_for_user(user, team_name, action)
    found = model.objects.filter(team=team, **lookup).first() if team else None
    if found is None:
        raise model.DoesNotExist(f"{what} not found")
    return found


def dataset_for_user(user, team_name: str | None, name: str, action: Action = Action.READ) -> Dataset:
    return _owned_by_team(Dataset, user, team_name, action, f"dataset {name!r}", name=name)


def model_for_user(user, team_name: str | None, name: str, action: Action = Action.READ) -> Model:
    return _owned_by_team(Model, user, team_name, action, f"model {name!r}", name=name)


def code_snapshot_for_user(user, team_name: str | None, content_hash: str, action: Action = Action.READ) -> CodeSnapshot:
    return _owned_by_team(CodeSnapshot, user, team_name, action, f"code snapshot {content_hash[:12]!r}",
                          archive__content_hash=content_hash)


def secret_for_user(user, team_name: str | None, name: str, action: Action = Action.READ) -> TeamSecret:
    return _owned_by_team(TeamSecret, user, team_name, action, f"secret {name!r}", name=name)


def credential_for_user(user, team_name: str | None, name: str, action: Action = Action.READ) -> Credential:
    return _owned_by_team(Credential, user, team_name, action, f"credential {name!r}", name=name)


# ------------------------------------------------------------------ websockets


RECHECK_SECONDS = 1.0


def current_user(user):
    """The user as the database has them now (a websocket's scope keeps the one
    from its connect); None once deleted or deactivated."""
    from django.contrib.auth import get_user_model

    if user is None or not user.is_authenticated:
        return None
    return get_user_model().objects.filter(pk=user.pk, is_active=True).first()


class Recheck:
    """An answer about access that a websocket asks for every message it sends,
    read from the database at most once per RECHECK_SECONDS."""

    def __init__(self, read: Callable[[], Any], seconds: float = RECHECK_SECONDS):
        self._read, self._seconds = read, seconds
        self._value: Any = None
        self._read_at: float | None = None

    def _due(self) -> bool:
        return self._read_at is None or time.monotonic() - self._read_at >= self._seconds

    def fresh(self) -> Any:
        """The answer while it is fresh, without reading; None once it is due again
        (value() reads it then)."""
        return None if self._due() else self._value

    async def value(self) -> Any:
        from channels.db import database_sync_to_async

        if self._due():
            self._value = await database_sync_to_async(self._read)()
            self._read_at = time.monotonic()
        return self._value
