"""Team secrets: encrypted at rest, resolved into a run's environment when it
starts, and masked wherever a run could echo them (its stored log).

A secret's value never enters the frozen spec, an event, an API answer or the
admin: the spec keeps `{secret: NAME}`, and only this module decrypts.
"""

import base64
import hashlib
import re

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from runs.executors.base import ExecutorError
from runs.models import TeamSecret

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
MASK = "********"
MAX_VALUE_BYTES = 64 * 1024
# Shorter values would mask ordinary words and digits all over the log.
MIN_MASKED_LENGTH = 4


class SecretError(Exception):
    pass


def _fernet() -> Fernet:
    material = settings.RUNYARD_SECRETS_KEY or settings.SECRET_KEY
    key = base64.urlsafe_b64encode(hashlib.sha256(("runyard-secrets:" + material).encode()).digest())
    return Fernet(key)


def set_secret(team, name: str, value: str, user) -> TeamSecret:
    if not NAME.fullmatch(name):
        raise SecretError(f"invalid secret name {name!r}: letters, digits, _ . - (not first), at most 100")
    if not isinstance(value, str) or value == "":
        raise SecretError("the value must be a non-empty string")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise SecretError("the value is larger than 64 KiB")
    ciphertext = _fernet().encrypt(value.encode())
    with transaction.atomic():
        secret, _ = TeamSecret.objects.update_or_create(
            team=team, name=name, defaults={"ciphertext": ciphertext, "updated_at": timezone.now(), "updated_by": user}
        )
    return secret


def _decrypt(secret: TeamSecret) -> str:
    try:
        return _fernet().decrypt(bytes(secret.ciphertext)).decode()
    except InvalidToken:
        raise ExecutorError(f"secret {secret.name} cannot be decrypted: was SECRET_KEY or RUNYARD_SECRETS_KEY changed?") from None


def referenced_names(spec: dict) -> dict[str, str]:
    """{env var: secret name} for every `{secret: NAME}` in the spec."""
    return {var: value["secret"] for var, value in spec.get("env", {}).items() if isinstance(value, dict)}


def missing_for_spec(spec: dict, team) -> list[dict]:
    """Errors (loc, msg) for secrets the spec names that the team does not have."""
    wanted = referenced_names(spec)
    present = set(TeamSecret.objects.filter(team=team, name__in=set(wanted.values())).values_list("name", flat=True))
    return [
        {"loc": f'env["{var}"]', "msg": f"team secret {name!r} not found in team {team.name}"}
        for var, name in wanted.items()
        if name not in present
    ]


def resolve_env(run) -> dict[str, str]:
    """The run's secret env vars with their values, for its start."""
    wanted = referenced_names(run.spec)
    secrets = {s.name: s for s in TeamSecret.objects.filter(team=run.team, name__in=set(wanted.values()))}
    env = {}
    for var, name in wanted.items():
        if name not in secrets:
            raise ExecutorError(f"team secret {name!r} (env {var}) no longer exists")
        env[var] = _decrypt(secrets[name])
    return env


def values_to_mask(run) -> list[str]:
    """The values the run's log must never show, longest first."""
    if not referenced_names(run.spec):
        return []
    try:
        values = resolve_env(run).values()
    except ExecutorError:
        return []
    return sorted({v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)


def mask(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
