"""Team credentials (SPEC §8): logins a run uses to get its image and its code.

- `registry`: a container registry's username and password (or token), for
  `image: {url, credential_name}`. The engine that runs the run pulls the image with
  it (a Swarm's nodes get it with the service, as `--with-registry-auth`).
- `git-token`: an HTTPS token (and a username where the server needs one), for
  `credential_name` on a git import. Git asks for it through an askpass program that
  reads it from a private temporary folder: it is never in a URL, a repository's
  configuration, a command line or an environment variable.
- `git-ssh`: an SSH private key (and the server's known_hosts), used through
  GIT_SSH_COMMAND with the key in a private temporary file removed afterwards.

Stored like team secrets (runs.team_secrets: encrypted with the same keys, rotated
with them), never shown back. Each credential names the host it is for and is sent
to no other, so a file naming a credential cannot hand it to a server of its own.
"""

import os
import re
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from urllib.parse import urlsplit

from cryptography.fernet import InvalidToken
from django.db import transaction
from django.utils import timezone

from runs.clusters import has_registry_host, image_reference
from runs.executors.base import ExecutorError, ImagePull
from runs.models import Credential, Run, Team
from runs.spec import CREDENTIAL_NAME
from runs.team_secrets import MAX_VALUE_BYTES, decrypt, encrypt

HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z")
DOCKER_HUB = "docker.io"
DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
# Where the server takes any username with a token (GitHub, GitLab, Gitea): what git sends.
DEFAULT_GIT_USERNAME = "x-access-token"
GIT_KINDS = (Credential.Kind.GIT_TOKEN, Credential.Kind.GIT_SSH)
LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})


class CredentialError(Exception):
    """A credential that cannot be stored as given; `field` names the input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------ storing


def normalize_host(host: str) -> str:
    host = host.strip().lower()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.rstrip("/")
    return DOCKER_HUB if host in DOCKER_HUB_NAMES else host


def set_credential(team: Team, name: str, *, kind: str, host: str, username: str = "", secret: str,
                   known_hosts: str = "", user=None) -> tuple[Credential, bool]:
    """Create or replace the team's credential `name`; (credential, created).
    `secret` is the password, token or private key. Raises CredentialError."""
    host, username = check_credential(name, kind=kind, host=host, username=username, secret=secret, known_hosts=known_hosts)
    now = timezone.now()
    with transaction.atomic():
        credential, created = Credential.objects.update_or_create(team=team, name=name, defaults={
            "kind": kind, "host": host, "username": username, "ciphertext": encrypt(secret.encode()),
            "known_hosts": known_hosts if kind == Credential.Kind.GIT_SSH else "", "updated_at": now, "updated_by": user,
        })
    return credential, created


def secret_field(kind: str) -> str:
    """What the secret of a credential of `kind` is called (the API's and the admin's field)."""
    return {Credential.Kind.GIT_SSH: "private_key", Credential.Kind.GIT_TOKEN: "token"}.get(kind, "password")


def check_credential(name: str, *, kind: str, host: str, username: str, secret: str, known_hosts: str = "") -> tuple[str, str]:
    """The host and username as they are stored; CredentialError naming the field at fault."""
    if not isinstance(name, str) or not CREDENTIAL_NAME.fullmatch(name):
        raise CredentialError("name", f"invalid credential name {name!r}: letters, digits, _ . - (not first), at most 100")
    if kind not in Credential.Kind.values:
        raise CredentialError("kind", f"kind must be one of {', '.join(Credential.Kind.values)}")
    for field, value in (("host", host), ("username", username), ("known_hosts", known_hosts)):
        if not isinstance(value, str) or "\x00" in value:
            raise CredentialError(field, f"{field} must be a string")
    host = normalize_host(host)
    if not HOST.match(host):
        raise CredentialError("host", f"{host!r} is not a host: give host or host:port (registry.example.org:5000, github.com)")
    username = username.strip()
    if kind == Credential.Kind.REGISTRY and not username:
        raise CredentialError("username", "a registry credential needs its username")
    if len(username) > 200 or any(c in username for c in "\r\n"):
        raise CredentialError("username", "username must be one line of at most 200 characters")
    what = secret_field(kind)
    if not isinstance(secret, str) or not secret.strip() or "\x00" in secret:
        raise CredentialError(what, f"{what} must be a non-empty string")
    if len(secret.encode()) > MAX_VALUE_BYTES:
        raise CredentialError(what, f"{what} is larger than 64 KiB")
    if len(known_hosts.encode()) > MAX_VALUE_BYTES:
        raise CredentialError("known_hosts", "known_hosts is larger than 64 KiB")
    if kind == Credential.Kind.GIT_SSH and "PRIVATE KEY" not in secret:
        raise CredentialError(what, "expected an SSH private key (-----BEGIN OPENSSH PRIVATE KEY----- ...)")
    if kind != Credential.Kind.GIT_SSH and any(c in secret for c in "\r\n"):
        raise CredentialError(what, f"{what} must be one line")
    return host, username


def _secret(credential: Credential) -> str:
    try:
        return decrypt(credential.ciphertext).decode()
    except InvalidToken:
        raise ExecutorError(f"credential {credential.name} cannot be decrypted: was SECRET_KEY or RUNYARD_SECRETS_KEY changed?") from None


def _host_matches(credential_host: str, host: str) -> bool:
    """`host` (host[:port]) is what the credential is for: the same, or the same host on
    any port where the credential names none."""
    host = normalize_host(host)
    return host == credential_host or (":" not in credential_host and host.rsplit(":", 1)[0] == credential_host)


# ------------------------------------------------------------------ images


def registry_of(image: str) -> str:
    """The registry host an image reference is pulled from (docker's rule)."""
    return normalize_host(image.partition("/")[0]) if has_registry_host(image) else DOCKER_HUB


def _reference(image: str, cluster) -> str:
    """The image as the run's engine pulls it: a Swarm adds its default registry."""
    return image_reference(cluster, image) if cluster is not None and cluster.kind == cluster.Kind.SWARM else image


def image_errors(spec: dict, team: Team, cluster) -> list[dict]:
    """Errors (loc, msg) for the spec's registry credential: it must be the team's, a
    registry credential, and for the registry the image comes from."""
    name = spec.get("image_credential")
    if not name:
        return []
    loc = "image.credential_name"
    credential = Credential.objects.filter(team=team, name=name).first()
    if credential is None:
        return [{"loc": loc, "msg": f"credential {name!r} not found in team {team.name}"}]
    if credential.kind != Credential.Kind.REGISTRY:
        return [{"loc": loc, "msg": f"credential {name!r} is a {credential.kind} credential, not a registry one"}]
    registry = registry_of(_reference(spec["image"], cluster))
    if not _host_matches(credential.host, registry):
        return [{"loc": loc, "msg": f"credential {name!r} is for registry {credential.host}, and the image comes from {registry}"}]
    return []


def image_pull_for(run: Run) -> ImagePull | None:
    """How the run's engine gets its image: with the run's registry credential; or
    anonymously, but always asking the registry, where some team keeps a credential for
    it (a private registry: the engine's copy is not proof of access); else None (the
    engine's own copy, as ever). ExecutorError when the credential has gone since."""
    cluster = run.cluster if run.cluster_id else None
    registry = registry_of(_reference(run.image, cluster))
    name = run.spec.get("image_credential")
    if name:
        credential = Credential.objects.filter(team_id=run.team_id, name=name, kind=Credential.Kind.REGISTRY).first()
        if credential is None:
            raise ExecutorError(f"registry credential {name!r} no longer exists in the run's team")
        if not _host_matches(credential.host, registry):
            raise ExecutorError(f"registry credential {name!r} is for {credential.host}, not {registry}")
        return ImagePull(registry, name, credential.username, _secret(credential))
    guarded = Credential.objects.filter(kind=Credential.Kind.REGISTRY).values_list("host", flat=True).distinct()
    if any(_host_matches(host, registry) for host in guarded):
        return ImagePull(registry)
    return None


# ------------------------------------------------------------------ git


def git_host(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of a git URL; scp-like `git@host:path` is ssh."""
    if "://" in url:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return parts.scheme.lower(), normalize_host(host)
    user_host, _, _ = url.partition(":")
    return "ssh", normalize_host(user_host.rpartition("@")[2])


def git_credential(team_id: int, name: str, url: str) -> Credential:
    """The team's git credential `name`, checked against `url`; CredentialError
    (field "credential_name") saying what does not fit."""
    credential = Credential.objects.filter(team_id=team_id, name=name).first()
    if credential is None:
        team = Team.objects.filter(pk=team_id).values_list("name", flat=True).first()
        raise CredentialError("credential_name", f"credential {name!r} not found in team {team}")
    if credential.kind not in GIT_KINDS:
        raise CredentialError("credential_name", f"credential {name!r} is a {credential.kind} credential, not a git one")
    scheme, host = git_host(url)
    if credential.kind == Credential.Kind.GIT_TOKEN and scheme not in ("https", "http"):
        raise CredentialError("credential_name", f"credential {name!r} holds a token, for https:// URLs; {url} is not one")
    if credential.kind == Credential.Kind.GIT_TOKEN and scheme == "http" and host.rsplit(":", 1)[0] not in LOOPBACK:
        # Plain HTTP would show the token to anyone on the way: only to this machine itself.
        raise CredentialError("credential_name", f"credential {name!r} is sent over https:// only (http:// only to this machine); {url} is http://")
    if credential.kind == Credential.Kind.GIT_SSH and scheme != "ssh":
        raise CredentialError("credential_name", f"credential {name!r} holds an SSH key, for ssh:// or git@host:path URLs; {url} is not one")
    if not _host_matches(credential.host, host):
        raise CredentialError("credential_name", f"credential {name!r} is for {credential.host}, and {url} is on {host}")
    return credential


ASKPASS = """#!/bin/sh
# Git asks for the username, then the password: each is read from its file.
case "$1" in
  [Uu]sername*) cat {username} ;;
  *) cat {password} ;;
esac
"""


@contextmanager
def git_access(credential: Credential | None):
    """What git's environment needs to log in with `credential`, for the duration of the
    block; its files are removed after. Empty for none. No credential helper of this
    host's user (global config) is asked or told: nothing stores the secret."""
    if credential is None:
        yield {}
        return
    secret = _secret(credential)
    folder = tempfile.mkdtemp(prefix="runyard-git-login-")  # 0700: this process's user only
    try:
        env = {
            "GIT_CONFIG_GLOBAL": os.devnull,
            # Clears credential.helper wherever else it is set (a repository's config).
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
        }
        if credential.kind == Credential.Kind.GIT_TOKEN:
            username = _private_file(folder, "username", (credential.username or DEFAULT_GIT_USERNAME) + "\n")
            password = _private_file(folder, "password", secret + "\n")
            script = _private_file(folder, "askpass", ASKPASS.format(username=shlex.quote(username), password=shlex.quote(password)), mode=0o700)
            env["GIT_ASKPASS"] = script
        else:
            key = _private_file(folder, "key", secret.strip() + "\n")  # ssh refuses a key without its last newline
            known_hosts = _private_file(folder, "known_hosts", credential.known_hosts.strip() + "\n")
            checking = "yes" if credential.known_hosts.strip() else "accept-new"
            env["GIT_SSH_COMMAND"] = " ".join([
                "ssh", "-F", "/dev/null", "-i", shlex.quote(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={shlex.quote(known_hosts)}",
                "-o", f"StrictHostKeyChecking={checking}",
            ])
        yield env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _private_file(folder: str, name: str, text: str, mode: int = 0o600) -> str:
    path = os.path.join(folder, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return path


# ------------------------------------------------------------------ showing


def describe(credential: Credential) -> dict:
    """What the API shows of a credential: never its secret."""
    return {
        "name": credential.name,
        "kind": credential.kind,
        "host": credential.host,
        "username": credential.username or None,
        "known_hosts": bool(credential.known_hosts) if credential.kind == Credential.Kind.GIT_SSH else None,
        "created_at": credential.created_at,
        "updated_at": credential.updated_at,
        "updated_by": credential.updated_by.get_username() if credential.updated_by else None,
    }

