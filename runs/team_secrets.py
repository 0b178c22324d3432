"""Team secrets: encrypted at rest, resolved into a run's environment when it
starts, and masked wherever a run could echo them (its stored log).

A secret's value never enters the frozen spec, an event, an API answer or the
admin: the spec keeps `{secret: NAME}`, and only this module decrypts.

The values a run's log must never show are fixed when the run starts and kept
with the run, encrypted (Run.mask_ciphertext): a secret deleted or changed while
the run lives, and a collector restarted after that, still masks what the run
was given.

Keys: RUNYARD_SECRETS_KEY lists one or more keys, comma-separated, newest first
(unset: SECRET_KEY). Each is stretched with HKDF into a Fernet key; new values
are encrypted with the first, and every other key (and the bare-hash derivation
of earlier versions) still decrypts, so keys can be rotated without losing a
secret. `manage.py rotate_secrets` re-encrypts everything with the newest key.
"""

import base64
import hashlib
import json
import logging
import re

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from runs.executors.base import ExecutorError
from runs.models import Credential, Run, TeamSecret

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
MASK = "********"
MAX_VALUE_BYTES = 64 * 1024
# Shorter values would mask ordinary words and digits all over the log.
MIN_MASKED_LENGTH = 4


class SecretError(Exception):
    pass


HKDF_SALT = b"runyard-secrets"
HKDF_INFO = b"runyard team secrets and run masks, fernet v2"


def configured_keys() -> list[str]:
    """The key materials, newest first: RUNYARD_SECRETS_KEY's list, else SECRET_KEY."""
    listed = [key.strip() for key in (settings.RUNYARD_SECRETS_KEY or "").split(",") if key.strip()]
    return listed or [settings.SECRET_KEY]


def _derived(material: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(material.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _legacy(material: str) -> Fernet:
    """The derivation before HKDF (a bare hash), kept so older ciphertexts still decrypt."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(("runyard-secrets:" + material).encode()).digest()))


def _fernet() -> MultiFernet:
    """Encrypts with the newest key; decrypts with any configured one. SECRET_KEY
    stays a decrypt-only key when RUNYARD_SECRETS_KEY is set, so secrets kept
    before it was set are not lost (rotate_secrets moves them to the new key)."""
    keys = configured_keys()
    raw = (settings.RUNYARD_SECRETS_KEY or "").strip()
    materials = list(dict.fromkeys(keys + [settings.SECRET_KEY]))
    # Earlier versions hashed RUNYARD_SECRETS_KEY whole, commas and all.
    legacy = list(dict.fromkeys(keys + ([raw] if raw else []) + [settings.SECRET_KEY]))
    return MultiFernet([_derived(m) for m in materials] + [_legacy(m) for m in legacy])


def encrypt(plain: bytes) -> bytes:
    return _fernet().encrypt(plain)


def decrypt(token: bytes) -> bytes:
    """Raises InvalidToken when no configured key opens it."""
    return _fernet().decrypt(bytes(token))


def set_secret(team, name: str, value: str, user) -> TeamSecret:
    if not NAME.fullmatch(name):
        raise SecretError(f"invalid secret name {name!r}: letters, digits, _ . - (not first), at most 100")
    if not isinstance(value, str) or value == "":
        raise SecretError("the value must be a non-empty string")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise SecretError("the value is larger than 64 KiB")
    ciphertext = encrypt(value.encode())
    with transaction.atomic():
        secret, _ = TeamSecret.objects.update_or_create(
            team=team, name=name, defaults={"ciphertext": ciphertext, "updated_at": timezone.now(), "updated_by": user}
        )
    return secret


def _decrypt(secret: TeamSecret) -> str:
    try:
        return decrypt(secret.ciphertext).decode()
    except InvalidToken:
        raise ExecutorError(f"secret {secret.name} cannot be decrypted: was SECRET_KEY or RUNYARD_SECRETS_KEY changed?") from None


def referenced_names(spec: dict) -> dict[str, str]:
    """{env var: secret name} for every `{secret: NAME}` in the spec."""
    return {var: value["secret"] for var, value in spec.get("env", {}).items() if isinstance(value, dict) and "secret" in value}


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
    """The run's secret env vars with their values, for its start: team secrets and
    the run's own inline secrets."""
    wanted = referenced_names(run.spec)
    secrets = {s.name: s for s in TeamSecret.objects.filter(team=run.team, name__in=set(wanted.values()))}
    env = {}
    for var, name in wanted.items():
        if name not in secrets:
            raise ExecutorError(f"team secret {name!r} (env {var}) no longer exists")
        env[var] = _decrypt(secrets[name])
    inline = inline_names(run.spec)
    if inline:
        stored = open_inline_values(run)
        for var in inline:
            if var not in stored:
                raise ExecutorError(f"the value of inline secret {var} was not stored with the run")
            env[var] = stored[var]
    return env


def resolve_env_for_start(run) -> dict[str, str]:
    """resolve_env, and the values it gives the run fixed as the run's mask, in
    the same step: whatever reaches the run is masked for as long as it lives."""
    env = resolve_env(run)
    if env:
        keep_mask(run.pk, env.values())
    return env


def keep_mask(run_id: int, values) -> None:
    """Add `values` to the run's stored mask. A start tried again (after a lost
    lease) may see a changed secret while the first value already reached the
    run: both stay masked."""
    with transaction.atomic():
        run = Run.objects.select_for_update().only("mask_ciphertext").get(pk=run_id)
        kept = set(_stored_mask(run) or [])
        wanted = sorted(kept | {v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)
        if run.mask_ciphertext is None or set(wanted) != kept:
            Run.objects.filter(pk=run_id).update(mask_ciphertext=encrypt(json.dumps(wanted).encode()))


def _stored_mask(run) -> list[str] | None:
    """The run's fixed mask, or None if it has none (started before masks were kept)."""
    if run.mask_ciphertext is None:
        return None
    try:
        return json.loads(decrypt(run.mask_ciphertext))
    except (InvalidToken, ValueError):
        log.error("run %s: its stored mask cannot be decrypted (was RUNYARD_SECRETS_KEY changed?); "
                  "masking the team's current secrets instead", run.pk)
        return None


def values_to_mask(run) -> list[str]:
    """The values the run's log must never show, longest first: those fixed when
    it started. Runs started before masks were kept use the team's current secrets."""
    stored = _stored_mask(run)
    if stored is not None:
        return sorted(set(stored), key=len, reverse=True)
    if not referenced_names(run.spec) and not inline_names(run.spec):
        return []
    try:
        values = resolve_env(run).values()
    except ExecutorError:
        return []
    return sorted({v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)


# ------------------------------------------------------------------ inline secrets
# `env: {X: {value: ..., secret: true}}`: a value of the run's own, not the team's. The
# frozen spec says {"inline_secret": true}; the values are kept encrypted with the run
# (Run.inline_secrets_ciphertext), so a reproduction starts with them again.


def inline_names(spec: dict) -> list[str]:
    return [var for var, value in spec.get("env", {}).items() if isinstance(value, dict) and value.get("inline_secret")]


def open_inline_values(run) -> dict[str, str]:
    """{var: value} of the run's inline secrets; ExecutorError if no key opens them."""
    if run.inline_secrets_ciphertext is None:
        return {}
    try:
        return json.loads(decrypt(run.inline_secrets_ciphertext))
    except (InvalidToken, ValueError):
        raise ExecutorError("the run's inline secrets cannot be decrypted: was SECRET_KEY or RUNYARD_SECRETS_KEY changed?") from None


def seal_inline_values(spec: dict, given: dict[str, str], origin=None) -> tuple[bytes | None, list[dict]]:
    """The ciphertext to keep with a new run: the value of each inline secret of `spec`,
    from `given` (the run file) or else from `origin` (the run it reproduces); and the
    errors (loc, msg) of those without a usable value."""
    wanted = inline_names(spec)
    if not wanted:
        return None, []
    try:
        kept = open_inline_values(origin) if origin is not None else {}
    except ExecutorError as exc:
        kept, errors = {}, [{"loc": "env", "msg": str(exc)}]
    else:
        errors = []
    values = {}
    for var in wanted:
        loc = f'env["{var}"].value'
        value = given.get(var, kept.get(var))
        if value is None:
            errors.append({"loc": loc, "msg": "required: an inline secret needs its value ({value: ..., secret: true})"})
        elif value == "":
            errors.append({"loc": loc, "msg": "must not be empty"})
        elif len(value.encode()) > MAX_VALUE_BYTES:
            errors.append({"loc": loc, "msg": "larger than 64 KiB"})
        else:
            values[var] = value
    if errors:
        return None, errors
    return encrypt(json.dumps(values).encode()), []


def mask(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def without_partial_value_at_end(text: str, values: list[str]) -> str:
    """`text` without a trailing beginning of a masked value: where a line is cut,
    the start of a secret that runs past the cut must not be kept."""
    cut = len(text)
    for value in values:
        # The longest k < len(value) with text ending in value[:k].
        start = text.find(value[0], max(0, len(text) - len(value) + 1))
        while start >= 0:
            if value.startswith(text[start:]):
                cut = min(cut, start)
                break
            start = text.find(value[0], start + 1)
    return text[:cut]


def rotate_all() -> tuple[int, list[str]]:
    """Re-encrypt every team secret, credential, stored run mask and run's inline
    secrets with the newest key.

    Returns how many were re-encrypted and what could not be decrypted with any
    configured key (left as it is). A value changed meanwhile is left to its
    writer, who used the newest key already.
    """
    fernet = _fernet()
    rotated, unreadable = 0, []
    for secret in TeamSecret.objects.select_related("team").only("pk", "name", "ciphertext", "team__name").iterator():
        old = bytes(secret.ciphertext)
        try:
            new = fernet.rotate(old)
        except InvalidToken:
            unreadable.append(f"secret {secret.team.name}/{secret.name}")
            continue
        rotated += TeamSecret.objects.filter(pk=secret.pk, ciphertext=old).update(ciphertext=new)
    for field, what in (("mask_ciphertext", "mask"), ("inline_secrets_ciphertext", "inline secrets")):
        for run_id, ciphertext in Run.objects.exclude(**{field: None}).values_list("pk", field).iterator():
            old = bytes(ciphertext)
            try:
                new = fernet.rotate(old)
            except InvalidToken:
                unreadable.append(f"{what} of run {run_id}")
                continue
            rotated += Run.objects.filter(pk=run_id, **{field: old}).update(**{field: new})
    for credential in Credential.objects.select_related("team").only("pk", "name", "ciphertext", "team__name").iterator():
        old = bytes(credential.ciphertext)
        try:
            new = fernet.rotate(old)
        except InvalidToken:
            unreadable.append(f"credential {credential.team.name}/{credential.name}")
            continue
        rotated += Credential.objects.filter(pk=credential.pk, ciphertext=old).update(ciphertext=new)
    return rotated, unreadable
