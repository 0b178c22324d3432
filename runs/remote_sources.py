"""Imports from the network (SPEC §8): hf://huggingface.co/ORG/REPO, s3://, gs://.

Each is settled when the run is created: resolved there, or refused there naming the
source and what this installation lacks. Never a run that starts without its data,
and never a creation that hangs: the host is probed first, with a short timeout
(RUNYARD_NETWORK_PROBE_SECONDS; RUNYARD_NETWORK_SOURCES=off refuses without trying).

- hf:// is a git repository over HTTPS (RUNYARD_HF_ENDPOINT/ORG/REPO): runs.imports
  resolves and fetches it as a git import, and refuses a revision whose files are in
  Git LFS, which Runyard does not fetch (the run would see pointer files).
- s3:// and gs:// need a client and credentials that Runyard does not have: refused,
  naming the network first where the host cannot be reached.
- git over HTTP(S) (and so VESSL's git:// shorthand) is probed the same way first.
"""

import re
import socket
import threading
from urllib.parse import urlsplit

from django.conf import settings

from runs.spec import DEFAULT_GIT_REF

_HF = re.compile(r"hf://[^/]+/(?P<path>[^@]+?)(?:@(?P<rev>[^@]+))?")
_BUCKET_HOSTS = {"s3": ("s3.amazonaws.com", "Amazon S3"), "gs": ("storage.googleapis.com", "Google Cloud Storage")}


def hf_repository(url: str) -> tuple[str, str, str]:
    """(git URL, ref, "") of an hf:// source, or ("", "", why it cannot be reached)."""
    match = _HF.fullmatch(url)
    endpoint = settings.RUNYARD_HF_ENDPOINT
    parts = urlsplit(endpoint)
    # A file:// endpoint is a mirror on this machine's disk (git's rules, RUNYARD_GIT_ALLOW_FILE, apply).
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not reachable(parts.hostname or "", port):
            return "", "", unreachable(url, parts.hostname or endpoint)
    return f"{endpoint}/{match['path']}", match["rev"] or DEFAULT_GIT_REF, ""


def git_refusal(url: str) -> str:
    """Why a git repository over HTTP(S) cannot be read from here, or "": its host is
    probed first, so that an installation with no route out says so at once rather
    than after git's own timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return "" if reachable(parts.hostname, port) else unreachable(url, parts.hostname)


def bucket_refusal(url: str) -> str:
    """Why an s3:// or gs:// import cannot be honoured here."""
    host, service = _BUCKET_HOSTS[url.partition("://")[0]]
    if not reachable(host, 443):
        return unreachable(url, host)
    return (f"{url}: importing from {service} needs a client and credentials that this installation does not have;"
            " upload the data as a dataset (runyard dataset create) and import dataset://NAME")


def unreachable(url: str, host: str) -> str:
    return f"{url} needs network access to {host}, which this installation cannot reach"


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port opens within RUNYARD_NETWORK_PROBE_SECONDS.
    The name lookup has no timeout of its own, so the probe runs in a thread."""
    if settings.RUNYARD_NETWORK_SOURCES == "off" or not host:
        return False
    timeout = settings.RUNYARD_NETWORK_PROBE_SECONDS
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name=f"probe {host}", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(answer and answer[0])
