"""Import volumes (SPEC §2 `import`): resolved and frozen when a run is created,
materialized as read-only volumes while it is initializing.

- git: the ref is resolved to a commit SHA at creation; the tree at that commit
  (`git archive`, no .git) is what the run sees. The commit is always fetched from
  the URL the run names: a SHA alone proves nothing about who may read it. With
  `credential_name`, git logs in with the team's git credential (runs.credentials),
  both to resolve the ref and to fetch.
- dataset://NAME[@VERSION]: NAME alone is frozen to the newest version.
- code://HASH: a snapshot uploaded with `runyard run create --code DIR`.
- vessl-model://ORG/REPO[/N] (model://REPO[@N]): a model version; REPO alone is
  frozen to the newest version.
- run://ID/PATH: the files an earlier run of the team exported under PATH.
- volume://NAME: frozen to run://ID/PATH, the files the team's newest run with whole
  outputs (runs.exports.WHOLE_OUTPUTS) exported to volume NAME (or vessl-artifact://NAME).
- hf://huggingface.co/ORG/REPO[@REV]: a git repository over HTTPS, resolved and fetched
  as git is once runs.remote_sources finds it reachable; s3:// and gs:// are refused.

An import volume is a cache shared by the runs that read the same content, so its
key names the team and the (normalized) source as well as the content: another
team naming the same commit or hash never finds this team's volume.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from runs import credentials, remote_sources
from runs.archives import open_archive, stored_files_hash, tar_of_stored_files
from runs.exports import WHOLE_OUTPUTS, files_under
from runs.executors.base import ExecutorError
from runs.file_sets import newest_version
from runs.lifecycle import FINAL
from runs.models import CodeSnapshot, Dataset, DatasetVersion, Model, ModelVersion, Run, Team

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
                credential = credentials.git_credential(team.pk, git["credential"], git["url"]) if git.get("credential") else None
                # Its host is probed first: no route out is said at once, not after git's timeout.
                if not git.get("commit") and (refusal := remote_sources.git_refusal(git["url"])):
                    raise GitError("url", refusal)
                git["commit"] = git.get("commit") or resolve_git_ref(git["url"], git["ref"], credential)
            except (GitError, credentials.CredentialError) as exc:
                errors.append({"loc": f"{loc}.git.{exc.field}", "msg": str(exc)})
                continue
            frozen_imports[path] = {"git": git}
            listed.append({"path": path, "kind": "git", "url": git["url"], "ref": git["ref"], "commit": git["commit"],
                           **({"credential": git["credential"]} if git.get("credential") else {})})
        elif "dataset" in source:
            name, wanted = source["dataset"]["name"], source["dataset"]["version"]
            version = newest_version(Dataset, team, name, wanted)
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
        elif "remote" in source:
            frozen, refusal = _resolve_remote(source["remote"])
            if refusal:
                errors.append({"loc": loc, "msg": refusal})
                continue
            frozen_imports[path] = frozen
            git = frozen["remote"]["git"]
            listed.append({"path": path, "kind": "hf", "url": frozen["remote"]["url"], "ref": git["ref"], "commit": git["commit"]})
        else:
            resolved = _resolve_team_files(source, team)
            if isinstance(resolved, str):
                errors.append({"loc": loc, "msg": resolved})
                continue
            frozen_imports[path], item = resolved
            listed.append({"path": path, **item})
    return {**spec, "import": frozen_imports}, listed, errors


def _resolve_remote(remote: dict) -> tuple[dict, str]:
    """An hf:// source frozen to a commit of its git repository, or why it cannot be
    (s3:// and gs:// always: runs.remote_sources)."""
    url = remote["url"]
    if not url.startswith("hf://"):
        return {}, remote_sources.bucket_refusal(url)
    if remote.get("git", {}).get("commit"):
        return {"remote": remote}, ""
    git_url, ref, refusal = remote_sources.hf_repository(url)
    if refusal:
        return {}, refusal
    try:
        commit = resolve_git_ref(git_url, ref)
        lfs_files = _lfs_files(git_url, commit)
    except GitError as exc:
        return {}, f"{url}: {exc}"
    if lfs_files:
        shown = ", ".join(lfs_files[:3]) + (f" and {len(lfs_files) - 3} more" if len(lfs_files) > 3 else "")
        return {}, (f"{url} keeps {len(lfs_files)} file{'s' if len(lfs_files) != 1 else ''} in Git LFS ({shown}), which"
                    " this installation cannot fetch: upload them as a dataset (runyard dataset create) and import dataset://NAME")
    return {"remote": {"url": url, "git": {"url": git_url, "ref": ref, "commit": commit}}}, ""


LFS_POINTER = "^version https://git-lfs.github.com/spec/v1"


def _lfs_files(url: str, commit: str) -> list[str]:
    """The files of `commit` that are Git LFS pointers (a few lines naming content kept
    elsewhere). Fetched into a temporary repository, gone afterwards: a dry run keeps nothing."""
    with tempfile.TemporaryDirectory(prefix="runyard-git-") as work:
        try:
            _git("init", "--quiet", work)
            fetched = _git("fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, commit, cwd=Path(work))
            if fetched.returncode != 0:
                raise GitError("url", f"could not fetch commit {commit[:12]} from {url}: {_last_line(fetched.stderr, 'git fetch failed')}")
            found = _git("grep", "-l", "-I", "-e", LFS_POINTER, commit, cwd=Path(work))
        except subprocess.TimeoutExpired:
            raise GitError("url", f"{url} did not answer in {GIT_TIMEOUT} s") from None
    return [line.partition(":")[2] for line in found.stdout.splitlines()] if found.returncode == 0 else []


def _resolve_team_files(source: dict, team: Team) -> tuple[dict, dict] | str:
    """A model version, an earlier run's exported files, or a volume's newest files:
    (the frozen source, what the run reads) or what is missing."""
    if "model" in source:
        name = source["model"]["name"]
        version = newest_version(Model, team, name, source["model"]["version"])
        if isinstance(version, str):
            return version
        archive = version.archive
        return {"model": {"name": name, "version": version.version}}, {
            "kind": "model", "name": name, "version": version.version, "content_hash": archive.content_hash,
            "size_bytes": archive.size_bytes, "file_count": archive.file_count,
        }
    if "run_files" in source:
        return _resolve_run_files(team, source["run_files"]["run"], source["run_files"]["path"])
    return _resolve_volume(team, source["volume"]["name"])


def _resolve_run_files(team: Team, run_id: int, path: str) -> tuple[dict, dict] | str:
    run = Run.objects.filter(team=team, pk=run_id).first()
    if run is None:
        return f"run {run_id} not found in team {team.name}"
    if run.status not in FINAL:
        return f"run {run_id} is {run.status}: only the files a finished run exported can be imported"
    if run.exports_state not in ("complete", "partial"):
        return f"run {run_id} exported no files" + (" (copying them out failed)" if run.exports_state == "failed" else "")
    files = files_under(run, path)
    if not files:
        return f"run {run_id} exported no files under {path}"
    partial = run.exports_state == "partial"
    return {"run_files": {"run": run.pk, "path": path}}, {
        "kind": "run_files", "run": run.pk, "run_path": path, "content_hash": stored_files_hash(files),
        "size_bytes": sum(size for size, _, _ in files.values()), "file_count": len(files), "partial": partial,
    }


def _resolve_volume(team: Team, name: str) -> tuple[dict, dict] | str:
    """The newest run of the team with whole outputs that exported to volume NAME."""
    targets = ({"volume": name}, {"artifact": name})
    finished = Run.objects.filter(WHOLE_OUTPUTS, team=team).order_by("-pk").values_list("pk", "spec__export")
    # Newest first, stopping at the first match: a team's recent runs are what is read.
    for run_id, exported in finished.iterator(chunk_size=200):
        for path, target in (exported or {}).items():
            if target in targets:
                resolved = _resolve_run_files(team, run_id, "/" + "/".join(part for part in path.split("/") if part))
                if not isinstance(resolved, str):
                    return resolved[0], {**resolved[1], "volume": name}
    return f"no run of team {team.name} has exported files to volume://{name} yet (a completed run's exports count)"


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


def _git(*args: str, cwd: Path | None = None, auth: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`auth`: what runs.credentials.git_access adds to git's environment to log in."""
    command = ["git", *(["-C", str(cwd)] if cwd else []), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=GIT_TIMEOUT, env={**_git_env(), **(auth or {})})


def _last_line(stderr: str, default: str) -> str:
    return (stderr.strip().splitlines() or [default])[-1]


LOGIN_REFUSED = ("could not read username", "authentication failed", "permission denied", "terminal prompts disabled",
                 "could not read password", "http basic: access denied")


# What git says after any failure over SSH: the line before it says why.
GIT_BOILERPLATE = ("fatal: could not read from remote repository.", "please make sure you have the correct access rights",
                   "and the repository exists.")


def _read_failure(url: str, stderr: str, default: str, credential) -> str:
    """Why `url` could not be read, with what to do where the server wants a login."""
    telling = [line.strip() for line in stderr.splitlines() if line.strip() and line.strip().lower() not in GIT_BOILERPLATE]
    errors = [line for line in telling if line.lower().startswith(("ssh:", "fatal:", "error:", "remote:"))]
    line = (errors or telling or [default])[0]
    if any(words in stderr.lower() for words in LOGIN_REFUSED):
        if credential is None:
            return f"could not read {url}: it needs a login: name a git credential of your team with credential_name ({line})"
        return f"could not read {url} with credential {credential.name!r}: the server refused it ({line})"
    return f"could not read {url}: {line}"


def resolve_git_ref(url: str, ref: str, credential=None) -> str:
    """The commit SHA `ref` names in the repository at `url`, logged in with the git
    `credential` (runs.models.Credential) if given.

    A 40-hex ref is still checked against the repository: it must answer, and a
    server that says it has no such object fails the run here, naming the commit.
    """
    _check_url(url)
    try:
        with credentials.git_access(credential) as auth:
            if SHA.fullmatch(ref):
                listed = _git("ls-remote", "--", url, auth=auth)
            else:
                listed = _git("ls-remote", "--", url, ref, f"{ref}^{{}}", auth=auth)
            if listed.returncode != 0:
                raise GitError("url", _read_failure(url, listed.stderr, "git ls-remote failed", credential))
            refs = {}
            for line in listed.stdout.splitlines():
                sha, _, name = line.partition("\t")
                refs[name] = sha
            if SHA.fullmatch(ref):
                if ref not in refs.values() and _server_lacks(url, ref, auth):
                    raise GitError("ref", f"commit {ref} not found in {url}")
                return ref
    except subprocess.TimeoutExpired:
        raise GitError("url", f"{url} did not answer in {GIT_TIMEOUT} s") from None
    for candidate in (f"refs/heads/{ref}^{{}}", f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if candidate in refs:
            return refs[candidate]
    raise GitError("ref", f"ref {ref!r} not found in {url}")


def _server_lacks(url: str, commit: str, auth: dict[str, str]) -> bool:
    """True when the server says it has no `commit`. Only the commit object is asked
    for (where the server filters); any other failure, such as a server that does not
    serve commits by SHA, is left to the full fetch when the run starts."""
    with tempfile.TemporaryDirectory(prefix="runyard-git-") as work:
        _git("init", "--quiet", work)
        fetched = _git("fetch", "--quiet", "--depth", "1", "--no-tags", "--filter=tree:0", "--", url, commit, cwd=Path(work), auth=auth)
        return fetched.returncode != 0 and "not our ref" in fetched.stderr


def normalize_git_url(url: str) -> str:
    """One spelling per repository, so that a team's runs share a cache: the host's
    case, a trailing slash and a trailing `.git` do not make another repository."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        host = netloc[2].lower()
        netloc = f"{netloc[0]}@{host}" if netloc[1] else host
        path = parts.path
        if parts.scheme.lower() == "file":
            path = os.path.normpath(path) if path else path
        url = urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))
    elif url.startswith("/"):
        url = "file://" + os.path.normpath(url)
    elif re.fullmatch(r"[^/:]+@[^/:]+:.*|[^/:]+:.*", url):  # scp-like user@host:path
        user_host, _, path = url.partition(":")
        user, at, host = user_host.rpartition("@")
        url = f"{user}{at}{host.lower()}:{path}"
    url = url.rstrip("/")
    if url.endswith(".git"):
        url = url[: -len(".git")].rstrip("/")
    return url


def cache_key(kind: str, team_id: int, source: str, content: str) -> str:
    """The import volume's name part: the content, and a digest of team, source and
    content, so another team (or another source) with the same content gets its own."""
    digest = hashlib.sha256(f"{team_id}\0{source}\0{content}".encode()).hexdigest()[:40]
    return f"{kind}-{content[:12]}-{digest}"


def volumes_for(run) -> list[ImportVolume]:
    """What to mount for a run, from its frozen spec; ExecutorError names what is gone."""
    volumes = []
    for path, source in run.spec.get("import", {}).items():
        if "git" in source:
            commit, url, login = source["git"]["commit"], source["git"]["url"], source["git"].get("credential")
            # Per team: a tree fetched with one team's login is never another team's cache.
            key = cache_key("git", run.team_id, normalize_git_url(url), commit)
            volumes.append(ImportVolume(path, key, f"git {url}@{commit[:12]}",
                                        lambda u=url, c=commit, t=run.team_id, n=login: _git_tree(u, c, t, n)))
        elif "dataset" in source:
            name, number = source["dataset"]["name"], source["dataset"]["version"]
            version = DatasetVersion.objects.filter(dataset__team=run.team, dataset__name=name, version=number).select_related("archive").first()
            if version is None or version.removed_at:
                raise ExecutorError(f"dataset {name}@{number} is no longer available (removed)")
            archive = version.archive
            key = cache_key("dataset", run.team_id, f"dataset://{name}", archive.content_hash)
            volumes.append(ImportVolume(path, key, f"dataset {name}@{number}", lambda a=archive: open_archive(a)))
        elif "remote" in source and "git" in source["remote"]:  # hf://, a git repository
            commit, url = source["remote"]["git"]["commit"], source["remote"]["git"]["url"]
            key = cache_key("git", run.team_id, normalize_git_url(url), commit)
            volumes.append(ImportVolume(path, key, f"{source['remote']['url']}@{commit[:12]}", lambda u=url, c=commit: _git_tree(u, c)))
        elif "code" in source:
            snapshot = CodeSnapshot.objects.filter(team=run.team, archive__content_hash=source["code"]["hash"]).select_related("archive").first()
            if snapshot is None:
                raise ExecutorError(f"code snapshot {source['code']['hash'][:12]} is no longer available")
            archive = snapshot.archive
            key = cache_key("code", run.team_id, "code://", archive.content_hash)
            volumes.append(ImportVolume(path, key, f"code {archive.content_hash[:12]}", lambda a=archive: open_archive(a)))
        elif "model" in source or "run_files" in source:
            volumes.append(_team_files_volume(run, path, source))
    return volumes


def _team_files_volume(run, path: str, source: dict) -> ImportVolume:
    if "model" in source:
        name, number = source["model"]["name"], source["model"]["version"]
        version = ModelVersion.objects.filter(model__team=run.team, model__name=name, version=number).select_related("archive").first()
        if version is None or version.removed_at:
            raise ExecutorError(f"model {name} version {number} is no longer available (removed)")
        archive = version.archive
        key = cache_key("model", run.team_id, f"model://{name}", archive.content_hash)
        return ImportVolume(path, key, f"model {name} version {number}", lambda: open_archive(archive))
    earlier, under = source["run_files"]["run"], source["run_files"]["path"]
    made_by = Run.objects.filter(team=run.team, pk=earlier).first()
    files = files_under(made_by, under) if made_by else {}
    if not files:
        raise ExecutorError(f"the files run {earlier} exported under {under} are no longer available")
    content = stored_files_hash(files)
    pinned = next((item.get("content_hash") for item in run.imports if item.get("path") == path), None)
    if pinned and pinned != content:
        raise ExecutorError(f"the files run {earlier} exported under {under} have changed since this run was created")
    key = cache_key("run", run.team_id, f"run://{earlier}{under}", content)
    return ImportVolume(path, key, f"run {earlier}'s files under {under}", lambda: tar_of_stored_files(files))


def _git_tree(url: str, commit: str, team_id: int | None = None, login: str | None = None):
    """The tree at `commit`, fetched from `url` itself (logged in with the team's git
    credential `login`, if any), as a tar file (no .git)."""
    _check_url(url)
    try:
        credential = credentials.git_credential(team_id, login, url) if login else None
    except credentials.CredentialError as exc:
        raise ExecutorError(f"git import: {exc}") from None
    work = Path(tempfile.mkdtemp(prefix="runyard-git-"))
    try:
        with credentials.git_access(credential) as auth:
            _fetch_commit(url, commit, work, auth, credential)
        out = tempfile.TemporaryFile()
        archive = subprocess.run(
            ["git", "-C", str(work), "archive", "--format=tar", commit],
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


def _fetch_commit(url: str, commit: str, work: Path, auth: dict[str, str] | None = None, credential=None) -> None:
    """Fetch `commit` from `url` into a new repository at `work`, or fail naming it.

    First the commit alone (most servers serve a commit by SHA); where the server
    refuses, its branches and tags, in which the commit must then be found.
    """
    init = _git("init", "--quiet", str(work))
    if init.returncode != 0:
        raise ExecutorError(f"git import: {_last_line(init.stderr, 'git init failed')}")
    if _git("fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, commit, cwd=work, auth=auth).returncode != 0:
        every = _git("fetch", "--quiet", "--no-tags", "--", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*",
                     cwd=work, auth=auth)
        if every.returncode != 0:
            raise ExecutorError(f"git import: {_read_failure(url, every.stderr, '?', credential)}")
    if _git("cat-file", "-e", f"{commit}^{{commit}}", cwd=work).returncode != 0:
        raise ExecutorError(f"git import: commit {commit} not found in {url}")
