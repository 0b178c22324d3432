"""Import volumes (SPEC §2 `import`): resolved and frozen when a run is created,
materialized as read-only volumes while it is initializing.

- git: the ref is resolved to a commit SHA at creation; the tree at that commit
  (`git archive`, no .git) is what the run sees.
- dataset://NAME[@VERSION]: NAME alone is frozen to the newest version.
- code://HASH: a snapshot uploaded with `runyard run create --code DIR`.
"""

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from runs.archives import open_archive
from runs.executors.base import ExecutorError
from runs.models import CodeSnapshot, Dataset, DatasetVersion, Team

GIT_TIMEOUT = 120
SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ImportVolume:
    """What an executor mounts: `key` names the content (the same key, the same
    bytes), `open_tar` gives them as a tar stream."""

    path: str
    key: str
    description: str
    open_tar: object  # () -> binary file object


def resolve(spec: dict, team: Team) -> tuple[dict, list[dict], list[dict]]:
    """Freeze every import of `spec` for `team`.

    Returns the frozen spec, the list of what the run reads (shown on the run),
    and the errors (loc, msg) of imports that cannot be resolved.
    """
    frozen_imports, listed, errors = {}, [], []
    for path, source in spec.get("import", {}).items():
        loc = f'import["{path}"]'
        if "git" in source:
            git = dict(source["git"])
            try:
                git["commit"] = git.get("commit") or resolve_git_ref(git["url"], git["ref"])
            except GitError as exc:
                errors.append({"loc": f"{loc}.git.{exc.field}", "msg": str(exc)})
                continue
            frozen_imports[path] = {"git": git}
            listed.append({"path": path, "kind": "git", "url": git["url"], "ref": git["ref"], "commit": git["commit"]})
        elif "dataset" in source:
            name, wanted = source["dataset"]["name"], source["dataset"]["version"]
            version = _dataset_version(team, name, wanted)
            if isinstance(version, str):
                errors.append({"loc": loc, "msg": version})
                continue
            frozen_imports[path] = {"dataset": {"name": name, "version": version.version}}
            listed.append({
                "path": path, "kind": "dataset", "name": name, "version": version.version,
                "content_hash": version.archive.content_hash, "size_bytes": version.archive.size_bytes,
            })
        elif "code" in source:
            snapshot = CodeSnapshot.objects.filter(team=team, archive__content_hash=source["code"]["hash"]).select_related("archive").first()
            if snapshot is None:
                errors.append({"loc": loc, "msg": f"code snapshot {source['code']['hash'][:12]} not found in team {team.name}"})
                continue
            frozen_imports[path] = {"code": {"hash": snapshot.archive.content_hash}}
            listed.append({"path": path, "kind": "code", "content_hash": snapshot.archive.content_hash, "size_bytes": snapshot.archive.size_bytes})
    return {**spec, "import": frozen_imports}, listed, errors


def _dataset_version(team: Team, name: str, wanted: int | None) -> DatasetVersion | str:
    dataset = Dataset.objects.filter(team=team, name=name).first()
    if dataset is None:
        return f"dataset {name!r} not found in team {team.name}"
    versions = DatasetVersion.objects.filter(dataset=dataset, removed_at__isnull=True).select_related("archive")
    if wanted is None:
        version = versions.order_by("-version").first()
        return version or f"dataset {name!r} has no versions"
    version = versions.filter(version=wanted).first()
    return version or f"dataset {name!r} has no version {wanted}"


class GitError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _git_env() -> dict[str, str]:
    protocols = "https:http:ssh:git" + (":file" if settings.RUNYARD_GIT_ALLOW_FILE else "")
    return {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password
        "GIT_ALLOW_PROTOCOL": protocols,  # no ext:: and friends
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def _check_url(url: str) -> None:
    if url.startswith("-"):
        raise GitError("url", "not a git URL")
    local = url.startswith("file://") or url.startswith("/") or "://" not in url and ":" not in url
    if local and not settings.RUNYARD_GIT_ALLOW_FILE:
        raise GitError("url", "local repositories are not allowed here (RUNYARD_GIT_ALLOW_FILE)")


def resolve_git_ref(url: str, ref: str) -> str:
    """The commit SHA `ref` names in the repository at `url`."""
    _check_url(url)
    if SHA.fullmatch(ref):
        return ref
    try:
        result = subprocess.run(
            ["git", "ls-remote", url, ref, f"{ref}^{{}}"], capture_output=True, text=True, timeout=GIT_TIMEOUT, env=_git_env()
        )
    except subprocess.TimeoutExpired:
        raise GitError("url", f"{url} did not answer in {GIT_TIMEOUT} s") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["git ls-remote failed"])[-1]
        raise GitError("url", f"could not read {url}: {reason}")
    refs = {}
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for candidate in (f"refs/heads/{ref}^{{}}", f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if candidate in refs:
            return refs[candidate]
    raise GitError("ref", f"ref {ref!r} not found in {url}")


def volumes_for(run) -> list[ImportVolume]:
    """What to mount for a run, from its frozen spec; ExecutorError names what is gone."""
    volumes = []
    for path, source in run.spec.get("import", {}).items():
        if "git" in source:
            commit, url = source["git"]["commit"], source["git"]["url"]
            volumes.append(ImportVolume(path, f"git-{commit}", f"git {url}@{commit[:12]}", lambda u=url, c=commit: _git_tree(u, c)))
        elif "dataset" in source:
            name, number = source["dataset"]["name"], source["dataset"]["version"]
            version = DatasetVersion.objects.filter(dataset__team=run.team, dataset__name=name, version=number).select_related("archive").first()
            if version is None or version.removed_at:
                raise ExecutorError(f"dataset {name}@{number} is no longer available (removed)")
            archive = version.archive
            volumes.append(ImportVolume(path, f"archive-{archive.content_hash}", f"dataset {name}@{number}", lambda a=archive: open_archive(a)))
        elif "code" in source:
            snapshot = CodeSnapshot.objects.filter(team=run.team, archive__content_hash=source["code"]["hash"]).select_related("archive").first()
            if snapshot is None:
                raise ExecutorError(f"code snapshot {source['code']['hash'][:12]} is no longer available")
            archive = snapshot.archive
            volumes.append(ImportVolume(path, f"archive-{archive.content_hash}", f"code {archive.content_hash[:12]}", lambda a=archive: open_archive(a)))
    return volumes


def _git_tree(url: str, commit: str):
    """The tree at `commit` as a tar file (no .git)."""
    _check_url(url)
    work = Path(tempfile.mkdtemp(prefix="runyard-git-"))
    try:
        clone = subprocess.run(
            ["git", "clone", "--quiet", "--no-checkout", "--", url, str(work / "repo")],
            capture_output=True, text=True, timeout=GIT_TIMEOUT, env=_git_env(),
        )
        if clone.returncode != 0:
            raise ExecutorError(f"git import: could not clone {url}: {(clone.stderr.strip().splitlines() or ['?'])[-1]}")
        out = tempfile.TemporaryFile()
        archive = subprocess.run(
            ["git", "-C", str(work / "repo"), "archive", "--format=tar", commit],
            stdout=out, stderr=subprocess.PIPE, text=False, timeout=GIT_TIMEOUT, env=_git_env(),
        )
        if archive.returncode != 0:
            out.close()
            raise ExecutorError(f"git import: commit {commit} not found in {url}")
        out.seek(0)
        return out
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"git import: {url} did not answer in {GIT_TIMEOUT} s") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
