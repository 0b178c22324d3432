"""The `runyard` command: runs, datasets, models and credentials through the HTTP API v1 (SPEC §3).

Standard library only, so that it works from any Python 3.8+ without Runyard's
server dependencies; PyYAML is used when it is importable, to put an uploaded
code snapshot into a YAML spec.

Where it talks to: RUNYARD_URL and RUNYARD_TOKEN, else what `runyard login`
saved in ~/.config/runyard/config.json.

Exit codes: 0 success (with --follow: the run completed), 1 an error, a run
that did not complete or (validate) a file that is not valid, 2 a usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL = ("completed", "failed", "terminated")
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules"})
ARCHIVE_TYPES = (
    (".tar.gz", "application/gzip"),
    (".tgz", "application/gzip"),
    (".tar", "application/x-tar"),
    (".zip", "application/zip"),
)
LOG_PAGE = 1000
POLL_SECONDS = 0.5
STATUS_CHECK_SECONDS = 2.0
# A final run whose log is still not complete after this long without a new line
# (its worker died and nobody finished it): stop following rather than hang.
STALLED_LOG_SECONDS = 60.0
# While following, the server may restart (a deploy): keep trying this long.
RECONNECT_SECONDS = 30.0
REQUEST_TIMEOUT = 60
UPLOAD_TIMEOUT = 900


class CliError(Exception):
    """Shown as `error: <message>`, then one line per detail; exit 1."""

    def __init__(self, message: str, details=()):
        super().__init__(message)
        self.message = message
        self.details = list(details)


class Unreachable(CliError):
    """No answer from the server (refused, timed out, connection lost)."""


# --- configuration ---------------------------------------------------------


def config_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".config", "runyard", "config.json")


def load_config() -> tuple[str, str]:
    """(url, token): the environment first, then the file `runyard login` wrote."""
    saved = {}
    path = config_path()
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict):
        raise CliError(f"cannot read {path}: expected a JSON object; run `runyard login` again")
    url = os.environ.get("RUNYARD_URL") or saved.get("url") or DEFAULT_URL
    token = os.environ.get("RUNYARD_TOKEN") or saved.get("token") or ""
    return normalize_url(str(url)), str(token).strip()


def normalize_url(url: str) -> str:
    """The server's base URL, whether it was given with /api/v1 or without."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CliError(f"not an http(s) URL: {url!r} (RUNYARD_URL or `runyard login --url`)")
    url = url.rstrip("/")
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    return url


def save_config(url: str, token: str) -> str:
    path = config_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    partial = path + ".partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "token": token}, f, indent=2)
        f.write("\n")
    os.chmod(partial, 0o600)  # an existing partial file keeps its mode through O_CREAT
    os.replace(partial, path)
    return path


# --- HTTP ------------------------------------------------------------------


class Upload:
    """A request body read from a file, reporting its progress as it is sent."""

    def __init__(self, file, length: int, progress: Progress):
        self.file, self.length, self.progress = file, length, progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size if size and size > 0 else 1 << 16)
        self.progress.advance(len(chunk))
        return chunk


class Client:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.last_status = 0  # of the last answer: 200 and 201 can mean different things

    def get(self, path: str, query=None):
        return self.call("GET", path, query=query)

    def post(self, path: str, body=None, content_type: str | None = None, query=None, timeout: float = REQUEST_TIMEOUT):
        return self.call("POST", path, query=query, body=body, content_type=content_type, timeout=timeout)

    def call(self, method, path, *, query=None, body=None, content_type=None, timeout: float = REQUEST_TIMEOUT):
        if not self.token:
            raise CliError(
                "no token: set RUNYARD_TOKEN, or run `runyard login --url URL --token TOKEN` "
                "(`python manage.py createtoken USER` on the server prints one)"
            )
        url = self.url + "/api/v1" + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        headers = {"Accept": "application/json", "Authorization": "Bearer " + self.token, "User-Agent": "runyard-cli"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
            if isinstance(body, Upload):
                headers["Content-Length"] = str(body.length)
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                self.last_status = response.status
        except urllib.error.HTTPError as exc:
            raise self._api_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise Unreachable(f"cannot reach Runyard at {self.url} ({text})") from None
        except (socket.timeout, TimeoutError):
            raise Unreachable(f"cannot reach Runyard at {self.url} (no answer in {timeout:g} s)") from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise Unreachable(f"lost the connection to Runyard at {self.url} ({exc.__class__.__name__}: {exc})") from None
        try:
            return json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise CliError(f"{url} did not answer with JSON: is {self.url} a Runyard server?") from None

    def _api_error(self, exc: urllib.error.HTTPError) -> CliError:
        try:
            body = json.loads(exc.read().decode("utf-8"))
        except Exception:
            body = None
        if isinstance(body, dict) and body.get("detail"):
            message = one_line(body["detail"])
            details = []
            for item in body.get("errors") or []:
                if isinstance(item, dict):
                    loc, msg = one_line(item.get("loc") or ""), one_line(item.get("msg") or "")
                    details.append(f"{loc}: {msg}" if loc else msg)
        else:
            message = f"HTTP {exc.code} {exc.reason} from {exc.geturl() or self.url}"
            details = []
        if exc.code == 401:
            message += " (check RUNYARD_TOKEN, or run `runyard login`)"
        return CliError(message, details)


# --- output ----------------------------------------------------------------


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """Messages about what the command does go to stderr; stdout is the result."""
    sys.stdout.flush()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def print_json(value) -> None:
    out(json.dumps(value, indent=2, sort_keys=False))


def one_line(text) -> str:
    return " ".join(str(text).split())


def files(count) -> str:
    return f"{count} file" if count == 1 else f"{count if count is not None else '?'} files"


def human_size(size) -> str:
    size = float(size or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def local_time(value) -> str:
    if not value:
        return "-"
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(headers, rows) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    for row in [headers, *rows]:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def clip(text, width: int) -> str:
    text = str(text if text is not None else "")
    return text if len(text) <= width else text[: width - 1] + "…"


class Progress:
    """An upload's progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.sent = label, max(total, 1), 0
        self.live = sys.stderr.isatty()
        self.drawn_at = 0.0

    def advance(self, count: int) -> None:
        self.sent += count
        now = time.monotonic()
        if self.live and (now - self.drawn_at > 0.1 or self.sent >= self.total):
            self.drawn_at = now
            share = min(self.sent / self.total, 1.0)
            bar = "#" * int(share * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {share * 100:3.0f}% {human_size(self.sent)}/{human_size(self.total)}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live and self.drawn_at:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --- archives --------------------------------------------------------------


def pack_directory(root: str, into) -> int:
    """Write `root` as a gzipped tar into the file `into`; return how many files it holds.

    Only regular files go in (a symlink to a file is followed): the server keeps
    files only. Version-control and environment directories are left out.
    """
    count = 0
    with tarfile.open(fileobj=into, mode="w:gz", dereference=True) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not os.path.islink(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if not os.path.isfile(path):
                    continue  # a broken link, a socket, a fifo
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, root).replace(os.sep, "/"))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                count += 1
    return count


def upload(client: Client, what: str, api_path: str, source: str, content_type: str | None = None, query=None):
    """POST a directory (packed here) or an archive file (sent as is) with a progress bar."""
    with tempfile.TemporaryFile(prefix="runyard-upload-") as packed:
        if content_type is None:
            if not os.path.isdir(source):
                raise CliError(f"{source}: no such directory")
            if pack_directory(source, packed) == 0:
                raise CliError(f"{source} holds no files to upload")
            content_type, body = "application/gzip", packed
        else:
            body = open(source, "rb")
        try:
            length = body.seek(0, os.SEEK_END)
            body.seek(0)
            progress = Progress(f"uploading {what}", length)
            try:
                answer = client.post(api_path, Upload(body, length, progress), content_type, query=query, timeout=UPLOAD_TIMEOUT)
            finally:
                progress.close()
        finally:
            if body is not packed:
                body.close()
    if isinstance(answer, dict):
        note(f"uploaded {files(answer.get('file_count'))}, {human_size(length)}")
    return answer


def archive_type(path: str) -> str | None:
    lower = path.lower()
    for suffix, content_type in ARCHIVE_TYPES:
        if lower.endswith(suffix):
            return content_type
    return None


# --- run spec --------------------------------------------------------------


def read_spec_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_spec(path: str, source: bytes) -> dict:
    """The spec as data, to be edited before it is sent (JSON as .json, else YAML)."""
    text = source.decode("utf-8", errors="replace")
    if path.lower().endswith(".json"):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{path} is not valid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise CliError("--code needs PyYAML installed (pip install pyyaml) to edit the YAML") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise CliError(f"{path} is not valid YAML: {getattr(exc, 'problem', None) or one_line(exc)}{where}") from None
    if not isinstance(spec, dict):
        raise CliError(f"{path}: a run spec is a mapping (name:, image:, run:, ...)")
    imports = spec.get("import")
    if imports is not None and not isinstance(imports, dict):
        raise CliError(f"{path}: import must be a mapping of path: source")
    if imports and "/code/" in imports and "code://local" not in imports.values():
        raise CliError(f"{path}: import[\"/code/\"] is taken; write `code://local` where the uploaded code goes")
    return spec


def put_code(spec: dict, code_uri: str) -> dict:
    """The uploaded code as an import: in place of every `code://local`, else at /code/."""
    imports = spec.get("import") or {}
    local = [target for target, source in imports.items() if source == "code://local"]
    for target in local:
        imports[target] = code_uri
    if not local:
        imports["/code/"] = code_uri
    spec["import"] = imports
    return spec


# --- following a run ---------------------------------------------------------


def emit_lines(lines, as_json: bool) -> None:
    for line in lines:
        out(json.dumps(line) if as_json else str(line.get("text", "")))
    sys.stdout.flush()


def patient_get(client: Client, path: str, query=None):
    """GET, riding out a server restart of up to RECONNECT_SECONDS."""
    deadline = None
    while True:
        try:
            return client.get(path, query)
        except Unreachable as exc:
            now = time.monotonic()
            if deadline is None:
                deadline = now + RECONNECT_SECONDS
                note(f"{exc.message}; retrying for {RECONNECT_SECONDS:.0f} s")
            if now > deadline:
                raise
            time.sleep(1)


def follow(client: Client, run_id: int, after: int, as_json: bool) -> int:
    """Print the run's log from line `after` on, each line once, until it is complete;
    then the outcome on stderr. 0 if the run completed."""
    checked = quiet_since = time.monotonic()
    while True:
        page = patient_get(client, f"/runs/{run_id}/logs", {"after": after, "limit": LOG_PAGE})
        lines = page.get("lines") or []
        if lines:
            emit_lines(lines, as_json)
            after = lines[-1]["n"]
            quiet_since = time.monotonic()
        if page.get("complete"):
            return outcome(patient_get(client, f"/runs/{run_id}"))
        if len(lines) >= LOG_PAGE:
            continue
        now = time.monotonic()
        if not lines and now - checked >= STATUS_CHECK_SECONDS:
            checked = now
            run = patient_get(client, f"/runs/{run_id}")
            if run.get("status") == "idle":
                return outcome(run)
            if run.get("status") in FINAL and now - quiet_since > STALLED_LOG_SECONDS:
                note(f"warning: the log of run {run_id} stopped growing before the server marked it complete")
                return outcome(run)
        if not lines:
            time.sleep(POLL_SECONDS)


def outcome(run: dict) -> int:
    """One summary line on stderr; the exit code a script can act on."""
    run_id, status = run.get("id"), run.get("status")
    reason, code = run.get("status_reason") or "", run.get("exit_code")
    if status == "completed":
        note(f"run {run_id} completed (exit code {code if code is not None else 0})")
        return 0
    if status == "idle":
        # The command ended and termination protection keeps the container: done, as far as a script waits.
        note(f"run {run_id} is idle: {reason or f'exit code {code}'}")
        return 0 if code == 0 else 1
    note(f"run {run_id} {status}: {reason or (f'exit code {code}' if code is not None else 'no reason given')}")
    return 1


# --- commands ----------------------------------------------------------------


def client_from_config() -> Client:
    return Client(*load_config())


def cmd_login(args) -> int:
    url = normalize_url(args.url)
    token = args.token
    if not token:
        if sys.stdin.isatty():
            token = getpass.getpass("token: ")
        else:
            token = sys.stdin.readline()
    token = (token or "").strip()
    if not token:
        raise CliError("no token given: --token TOKEN (`python manage.py createtoken USER` on the server prints one)")
    Client(url, token).get("/runs", {"limit": 1})  # refuses a wrong URL or token now, not at the next command
    path = save_config(url, token)
    note(f"logged in to {url}; saved in {path}")
    return 0


def cmd_run_create(args) -> int:
    client = client_from_config()
    source = read_spec_file(args.file)
    query = {"team": args.team} if args.team else None
    if args.code:
        if not os.path.isdir(args.code):
            raise CliError(f"--code {args.code}: no such directory")
        spec = load_spec(args.file, source)  # a spec that cannot take the code fails before the upload
        snapshot = upload(client, "code", "/code", args.code)
        spec = put_code(spec, f"code://{snapshot['hash']}")
        body, content_type = json.dumps(spec, default=str).encode(), "application/json"
    else:
        content_type = "application/json" if args.file.lower().endswith(".json") else "application/yaml"
        body = source
    run = client.post("/runs", body, content_type, query=query)
    return report_new_run(client, run, args, "created")


def cmd_run_validate(args) -> int:
    """POST /runs?dry_run=true: the file checked and resolved as creating it would,
    nothing created. Exit 0 when valid, 1 when not."""
    client = client_from_config()
    source = read_spec_file(args.file)
    content_type = "application/json" if args.file.lower().endswith(".json") else "application/yaml"
    query = {"dry_run": "true", **({"team": args.team} if args.team else {})}
    answer = client.post("/runs", source, content_type, query=query)
    if args.json:
        print_json(answer)
        return 0 if answer.get("valid") else 1
    name = "stdin" if args.file == "-" else args.file
    errors, warnings = answer.get("errors") or [], answer.get("warnings") or []
    if answer.get("valid"):
        out(f"{name}: valid" + (f", with {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""))
    else:
        out(f"{name}: not valid: {len(errors)} problem{'s' if len(errors) != 1 else ''}")
    for problem in errors:
        out("  " + problem_line(problem))
    if warnings:
        out("warnings:")
        for problem in warnings:
            out("  " + problem_line(problem))
    spec = answer.get("spec")
    if answer.get("valid") and isinstance(spec, dict):
        out("the run would use:")
        for line in describe_spec(spec):
            out("  " + line)
    return 0 if answer.get("valid") else 1


def problem_line(problem: dict) -> str:
    """'line 5  run[0].workdir: expected an absolute path'."""
    line, loc, msg = problem.get("line"), one_line(problem.get("loc") or ""), one_line(problem.get("msg") or "")
    where = f"line {line}  " if line else ""
    return f"{where}{loc}: {msg}" if loc else f"{where}{msg}"


def describe_spec(spec: dict) -> list[str]:
    """What a resolved spec pins, one line a thing, for people (--json has it all)."""
    resources = spec.get("resources") or {}
    lines = [f"name:      {spec.get('name')}", f"image:     {spec.get('image')}",
             f"resources: preset {resources.get('preset')} on cluster {resources.get('cluster')}"]
    for path, source in (spec.get("import") or {}).items():
        lines.append(f"import     {path} <- {describe_source(source)}")
    for path, target in (spec.get("export") or {}).items():
        lines.append(f"export     {path} -> {json.dumps(target, sort_keys=True)}")
    for index, step in enumerate(spec.get("run") or []):
        if "wait_seconds" in step:
            text = f"wait {step['wait_seconds']:g} s"
        else:
            text = one_line(step.get("command", "")) + (f"  (in {step['workdir']})" if step.get("workdir") else "")
        lines.append(f"run[{index}]    {clip(text, 100)}")
    for name, value in (spec.get("env") or {}).items():
        lines.append(f"env        {name}=" + (value if isinstance(value, str) else json.dumps(value, sort_keys=True)))
    return lines


def describe_source(source: dict) -> str:
    git = source.get("git") or (source.get("remote") or {}).get("git")
    if git:
        origin = (source.get("remote") or {}).get("url") or git.get("url")
        return f"{origin} {git.get('ref')}" + (f" = commit {git['commit']}" if git.get("commit") else "")
    if "dataset" in source:
        return f"dataset {source['dataset'].get('name')} version {source['dataset'].get('version')}"
    if "code" in source:
        return f"code snapshot {source['code'].get('hash', '')[:12]}"
    if "model" in source:
        return f"model {source['model'].get('name')} version {source['model'].get('version')}"
    if "run_files" in source:
        return f"the files run {source['run_files'].get('run')} exported under {source['run_files'].get('path')}"
    return json.dumps(source, sort_keys=True)


def report_new_run(client: Client, run: dict, args, verb: str) -> int:
    line = f"run {run['id']} {verb}: {run.get('name', '')} ({run.get('status')}) {client.url}/runs/{run['id']}/"
    if args.follow:
        note(line)
        return follow(client, run["id"], 0, args.json)
    if args.json:
        print_json(run)
    else:
        out(line)
    return 0


def cmd_run_list(args) -> int:
    query = {"status": args.status or [], "limit": args.limit}
    page = client_from_config().get("/runs", query)
    if args.json:
        print_json(page)
        return 0
    rows = [
        [str(r.get("id")), str(r.get("status")), clip(r.get("name"), 40), str(r.get("owner")), local_time(r.get("created_at"))]
        for r in page.get("items", [])
    ]
    if rows:
        table(["ID", "STATUS", "NAME", "OWNER", "CREATED"], rows)
    else:
        note("no runs")
    if page.get("next_cursor"):
        note(f"(the newest {len(rows)}; --limit N for more)")
    return 0


def progress_text(progress, eta) -> str | None:
    """0.42 and 95.0 -> "42% (about 95 s left)"."""
    if not isinstance(progress, (int, float)):
        return None
    text = f"{int(progress * 100)}%"
    if isinstance(eta, (int, float)):
        text += f" (about {eta:.0f} s left)"
    return text


def cmd_run_show(args) -> int:
    client = client_from_config()
    run = client.get(f"/runs/{args.id}")
    if args.json:
        print_json(run)
        return 0
    status = run.get("status", "")
    if run.get("status_reason"):
        status += f" ({run['status_reason']})"
    duration = run.get("duration_seconds")
    fields = [
        ("id", run.get("id")),
        ("name", run.get("name")),
        ("status", status),
        ("exit code", run.get("exit_code")),
        ("owner", f"{run.get('owner')} (team {run.get('team')})"),
        ("image", run.get("image")),
        ("preset", run.get("preset")),
        ("tags", ", ".join(run.get("tags") or [])),
        ("created", local_time(run.get("created_at"))),
        ("started", local_time(run.get("started_at"))),
        ("finished", local_time(run.get("finished_at"))),
        ("duration", f"{duration:.0f} s" if isinstance(duration, (int, float)) else None),
        ("progress", progress_text(run.get("progress"), run.get("eta_seconds"))),
        ("credits", run.get("credits")),
        ("reproduced from", run.get("reproduced_from")),
        ("log lines", run.get("log_lines")),
        ("description", run.get("description")),
    ]
    for label, value in fields:
        if value not in (None, ""):
            out(f"{label + ':':<17}{value}")
    out(f"{'url:':<17}{client.url}/runs/{run.get('id')}/")
    return 0


def cmd_run_logs(args) -> int:
    client = client_from_config()
    after = 0
    if args.tail is not None:
        run = client.get(f"/runs/{args.id}")
        after = max(0, int(run.get("log_lines") or 0) - args.tail)
    if args.follow:
        return follow(client, args.id, after, args.json)
    while True:
        page = client.get(f"/runs/{args.id}/logs", {"after": after, "limit": LOG_PAGE})
        lines = page.get("lines") or []
        if not lines:
            return 0
        emit_lines(lines, args.json)
        after = lines[-1]["n"]


def cmd_run_terminate(args) -> int:
    client = client_from_config()
    run = client.post(f"/runs/{args.id}/terminate")
    if args.wait:
        run = wait_until_removed(client, args.id)
    if args.json:
        print_json(run)
    else:
        code = run.get("exit_code")
        out(f"run {run.get('id')} {run.get('status')}" + (f" (exit code {code})" if code is not None else ""))
    return 0


def wait_until_removed(client: Client, run_id: int) -> dict:
    """Until the run is final and its container is gone: the server marks its log
    complete only after the container is removed."""
    while True:
        run = patient_get(client, f"/runs/{run_id}")
        if run.get("status") in FINAL:
            tail = patient_get(client, f"/runs/{run_id}/logs", {"after": run.get("log_lines") or 0, "limit": 1})
            if tail.get("complete"):
                return patient_get(client, f"/runs/{run_id}")
        time.sleep(POLL_SECONDS)


def cmd_run_reproduce(args) -> int:
    client = client_from_config()
    if args.env:
        body, content_type = json.dumps({"env": dict(args.env)}).encode(), "application/json"
    else:
        body, content_type = None, None
    run = client.post(f"/runs/{args.id}/reproduce", body, content_type)
    return report_new_run(client, run, args, f"created (reproduces run {args.id})")


def upload_version(client: Client, kind: str, name: str, path: str, query=None) -> dict:
    """A new version of dataset or model `name` from a directory or an archive file."""
    if os.path.isdir(path):
        content_type = None
    elif os.path.isfile(path):
        content_type = archive_type(path)
        if content_type is None:
            raise CliError(f"{path}: give a directory, or a .tar, .tar.gz, .tgz or .zip file")
    else:
        raise CliError(f"{path}: no such file or directory")
    quoted = urllib.parse.quote(name, safe="")
    return upload(client, f"{kind} {name}", f"/{kind}s/{quoted}/versions", path, content_type, query)


def report_version(client: Client, kind: str, name: str, version: dict, as_json: bool) -> int:
    if as_json:
        print_json(version)
        return 0
    what = "unchanged: the same files as" if client.last_status == 200 else "new"
    out(
        f"{kind} {version.get('name', name)}: {what} version {version.get('version')} "
        f"({files(version.get('file_count'))}, {human_size(version.get('size_bytes'))})"
    )
    return 0


def cmd_dataset_create(args) -> int:
    client = client_from_config()
    version = upload_version(client, "dataset", args.name, args.path)
    return report_version(client, "dataset", args.name, version, args.json)


def cmd_dataset_list(args) -> int:
    answer = client_from_config().get("/datasets")
    if args.json:
        print_json(answer)
        return 0
    rows = []
    for dataset in answer.get("items", []):
        versions = [v for v in dataset.get("versions") or [] if not v.get("removed")]
        latest = next((v for v in versions if v.get("version") == dataset.get("latest_version")), None)
        rows.append([
            str(dataset.get("name")),
            str(dataset.get("latest_version") if dataset.get("latest_version") is not None else "-"),
            str(len(versions)),
            str(latest.get("file_count")) if latest else "-",
            human_size(latest.get("size_bytes")) if latest else "-",
            local_time(latest.get("created_at")) if latest else "-",
        ])
    if rows:
        table(["NAME", "LATEST", "VERSIONS", "FILES", "SIZE", "CREATED"], rows)
    else:
        note("no datasets")
    return 0


def team_query(args):
    return {"team": args.team} if getattr(args, "team", None) else None


def cmd_model_create(args) -> int:
    client = client_from_config()
    version = upload_version(client, "model", args.name, args.path, team_query(args))
    return report_version(client, "model", args.name, version, args.json)


def made_by(version: dict) -> str:
    run = version.get("made_by_run")
    if isinstance(run, dict):
        return f"run {run.get('id')} ({run.get('status')})"
    return f"upload by {version.get('created_by') or '?'}"


def cmd_model_list(args) -> int:
    answer = client_from_config().get("/models", team_query(args))
    if args.json:
        print_json(answer)
        return 0
    rows = []
    for model in answer.get("items", []):
        latest = model.get("latest") or {}
        rows.append([
            str(model.get("name")),
            str(model.get("latest_version") if model.get("latest_version") is not None else "-"),
            str(model.get("version_count")),
            str(latest.get("file_count", "-")),
            human_size(latest.get("size_bytes")) if latest else "-",
            made_by(latest) if latest else "-",
            local_time(latest.get("created_at")) if latest else "-",
        ])
    if rows:
        table(["NAME", "LATEST", "VERSIONS", "FILES", "SIZE", "MADE BY", "CREATED"], rows)
    else:
        note("no models")
    return 0


def cmd_model_show(args) -> int:
    client = client_from_config()
    name = urllib.parse.quote(args.name, safe="")
    if args.version is not None:
        version = client.get(f"/models/{name}/versions/{args.version}", team_query(args))
        if args.json:
            print_json(version)
            return 0
        out(f"model {version.get('name')} version {version.get('version')}: {files(version.get('file_count'))}, "
            f"{human_size(version.get('size_bytes'))}, made by {made_by(version)}")
        used = ", ".join(str(run.get("id")) for run in version.get("used_by_runs") or []) or "no run yet"
        out(f"used by runs: {used}")
        table(["PATH", "SIZE", "SHA256"], [[str(f.get("path")), human_size(f.get("size")), str(f.get("sha256"))]
                                          for f in version.get("files") or []])
        return 0
    model = client.get(f"/models/{name}", team_query(args))
    if args.json:
        print_json(model)
        return 0
    out(f"model {model.get('name')}: latest version {model.get('latest_version') if model.get('latest_version') is not None else '-'}")
    rows = [[
        str(v.get("version")) + (" (removed)" if v.get("removed") else ""),
        made_by(v),
        ", ".join(str(run.get("id")) for run in v.get("used_by_runs") or []) or "-",
        str(v.get("file_count")),
        human_size(v.get("size_bytes")),
        local_time(v.get("created_at")),
    ] for v in model.get("versions") or []]
    table(["VERSION", "MADE BY", "USED BY RUNS", "FILES", "SIZE", "CREATED"], rows)
    return 0


def read_secret(args, what: str) -> str:
    """A password or token: one line from stdin with --password-stdin, else typed at a
    prompt (never an argument: the command line is visible to every user of the machine)."""
    if args.password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        value = getpass.getpass(f"{what}: ")
    else:
        raise CliError(f"give the {what} on stdin with --password-stdin, or run this in a terminal to type it")
    if not value:
        raise CliError(f"no {what} given")
    return value


def read_text_file(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def cmd_credential_create(args) -> int:
    body = {"kind": args.kind, "host": args.host}
    if args.username:
        body["username"] = args.username
    if args.kind == "git-ssh":
        if not args.ssh_key:
            raise CliError("a git-ssh credential needs --ssh-key FILE (the private key; - for stdin)")
        body["private_key"] = read_text_file(args.ssh_key, "--ssh-key")
        if args.known_hosts:
            body["known_hosts"] = read_text_file(args.known_hosts, "--known-hosts")
    else:
        if args.ssh_key or args.known_hosts:
            raise CliError("--ssh-key and --known-hosts are for --kind git-ssh")
        if args.kind == "registry" and not args.username:
            raise CliError("a registry credential needs --username")
        body["token" if args.kind == "git-token" else "password"] = read_secret(args, "token" if args.kind == "git-token" else "password")
    client = client_from_config()
    name = urllib.parse.quote(args.name, safe="")
    query = {"team": args.team} if args.team else None
    answer = client.call("PUT", f"/credentials/{name}", query=query, body=json.dumps(body).encode(), content_type="application/json")
    if args.json:
        print_json(answer)
        return 0
    verb = "created" if client.last_status == 201 else "replaced"
    out(f"credential {answer.get('name')} {verb}: {answer.get('kind')} for {answer.get('host')}")
    return 0


def cmd_credential_list(args) -> int:
    answer = client_from_config().get("/credentials", {"team": args.team} if args.team else None)
    if args.json:
        print_json(answer)
        return 0
    rows = [[str(c.get("name")), str(c.get("kind")), str(c.get("host")), str(c.get("username") or "-"),
             local_time(c.get("updated_at")), str(c.get("updated_by") or "-")] for c in answer.get("items", [])]
    if rows:
        table(["NAME", "KIND", "HOST", "USERNAME", "UPDATED", "BY"], rows)
    else:
        note("no credentials")
    return 0


def cmd_credential_delete(args) -> int:
    client = client_from_config()
    name = urllib.parse.quote(args.name, safe="")
    answer = client.call("DELETE", f"/credentials/{name}", query={"team": args.team} if args.team else None)
    if args.json:
        print_json(answer)
    else:
        out(f"credential {args.name} deleted")
    return 0


# --- arguments ---------------------------------------------------------------


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --json is accepted before the command and after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON, for scripts")

    parser = argparse.ArgumentParser(
        prog="runyard",
        description="Launch, watch, stop and reproduce Runyard runs. "
        "Talks to RUNYARD_URL with RUNYARD_TOKEN, or to what `runyard login` saved.",
    )
    parser.add_argument("--json", action="store_true", default=False, help="print the API's JSON, for scripts")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    login = commands.add_parser("login", parents=[common], help="save the server URL and token")
    login.add_argument("--url", required=True, help="the console's address, e.g. http://127.0.0.1:8000")
    login.add_argument("--token", help="an API token (read from stdin when left out)")
    login.set_defaults(handler=cmd_login)

    run = commands.add_parser("run", help="runs").add_subparsers(dest="action", metavar="ACTION", required=True)

    create = run.add_parser("create", parents=[common], help="create a run from a YAML spec")
    create.add_argument("-f", "--file", required=True, metavar="FILE", help="the run spec (YAML, or JSON as .json; - for stdin)")
    create.add_argument("--code", metavar="DIR", help="upload DIR and mount it at code://local imports, else /code/")
    create.add_argument("--team", help="create the run in this team of yours")
    create.add_argument("--follow", action="store_true", help="print the log live; exit 0 only if the run completes")
    create.set_defaults(handler=cmd_run_create)

    validate = run.add_parser("validate", parents=[common], help="check a run spec as creating it would, and create nothing")
    validate.add_argument("-f", "--file", required=True, metavar="FILE", help="the run spec (YAML, or JSON as .json; - for stdin)")
    validate.add_argument("--team", help="check it for this team of yours (its presets, datasets, secrets, credit limit)")
    validate.set_defaults(handler=cmd_run_validate)

    listing = run.add_parser("list", parents=[common], help="the newest runs")
    listing.add_argument("--status", action="append", metavar="S", help="only runs in this status (repeatable)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50, up to 200)")
    listing.set_defaults(handler=cmd_run_list)

    show = run.add_parser("show", parents=[common], help="one run")
    show.add_argument("id", type=int)
    show.set_defaults(handler=cmd_run_show)

    logs = run.add_parser("logs", parents=[common], help="a run's log")
    logs.add_argument("id", type=int)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends; exit 0 only if it completed")
    logs.add_argument("--tail", type=non_negative, metavar="N", help="start with the last N lines")
    logs.set_defaults(handler=cmd_run_logs)

    terminate = run.add_parser("terminate", parents=[common], help="stop a run")
    terminate.add_argument("id", type=int)
    terminate.add_argument("--wait", action="store_true", help="return once the run has stopped and its container is gone")
    terminate.set_defaults(handler=cmd_run_terminate)

    reproduce = run.add_parser("reproduce", parents=[common], help="a new run from a finished run's frozen spec")
    reproduce.add_argument("id", type=int)
    reproduce.add_argument("--env", action="append", type=env_pair, metavar="K=V", help="override an environment variable (repeatable)")
    reproduce.add_argument("--follow", action="store_true", help="print the log live; exit 0 only if the run completes")
    reproduce.set_defaults(handler=cmd_run_reproduce)

    dataset = commands.add_parser("dataset", help="datasets").add_subparsers(dest="action", metavar="ACTION", required=True)

    dataset_create = dataset.add_parser("create", parents=[common], help="upload a new version of a dataset")
    dataset_create.add_argument("name")
    dataset_create.add_argument("path", help="a directory, or a .tar, .tar.gz, .tgz or .zip file")
    dataset_create.set_defaults(handler=cmd_dataset_create)

    dataset_list = dataset.add_parser("list", parents=[common], help="the team's datasets")
    dataset_list.set_defaults(handler=cmd_dataset_list)

    model = commands.add_parser("model", help="models: versioned files runs make and import").add_subparsers(
        dest="action", metavar="ACTION", required=True)

    model_list = model.add_parser("list", parents=[common], help="the team's models")
    model_list.add_argument("--team", help="the models of this team of yours")
    model_list.set_defaults(handler=cmd_model_list)

    model_show = model.add_parser("show", parents=[common], help="a model's versions and their lineage, or one version's files")
    model_show.add_argument("name")
    model_show.add_argument("--version", type=int, metavar="N", help="list version N's files")
    model_show.add_argument("--team", help="a model of this team of yours")
    model_show.set_defaults(handler=cmd_model_show)

    model_create = model.add_parser("create", parents=[common], help="upload a new version of a model (made if new)")
    model_create.add_argument("name")
    model_create.add_argument("path", help="a directory, or a .tar, .tar.gz, .tgz or .zip file")
    model_create.add_argument("--team", help="in this team of yours")
    model_create.set_defaults(handler=cmd_model_create)

    credential = commands.add_parser("credential", help="registry and git credentials").add_subparsers(
        dest="action", metavar="ACTION", required=True)

    credential_create = credential.add_parser(
        "create", parents=[common], help="create or replace a credential (its secret is never shown back)",
        description="registry: --host REGISTRY --username USER, the password typed or --password-stdin; "
        "git-token: --host GIT_HOST [--username USER], the token typed or --password-stdin; "
        "git-ssh: --host GIT_HOST --ssh-key FILE [--known-hosts FILE].")
    credential_create.add_argument("name")
    credential_create.add_argument("--kind", required=True, choices=["registry", "git-token", "git-ssh"])
    credential_create.add_argument("--host", required=True, help="the registry or git server (host[:port]); it is used with no other")
    credential_create.add_argument("--username", help="required for a registry; a git server that needs one")
    credential_create.add_argument("--password-stdin", action="store_true", help="read the password or token from stdin")
    credential_create.add_argument("--ssh-key", metavar="FILE", help="git-ssh: the private key file (- for stdin)")
    credential_create.add_argument("--known-hosts", metavar="FILE", help="git-ssh: the server's known_hosts lines")
    credential_create.add_argument("--team", help="in this team of yours")
    credential_create.set_defaults(handler=cmd_credential_create)

    credential_list = credential.add_parser("list", parents=[common], help="the team's credentials (never their secrets)")
    credential_list.add_argument("--team", help="of this team of yours")
    credential_list.set_defaults(handler=cmd_credential_list)

    credential_delete = credential.add_parser("delete", parents=[common], help="delete a credential")
    credential_delete.add_argument("name")
    credential_delete.add_argument("--team", help="of this team of yours")
    credential_delete.set_defaults(handler=cmd_credential_delete)
    return parser


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a log line this terminal cannot show must not end the command
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except SystemExit as exc:  # argparse: --help, or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CliError as exc:
        note(f"error: {exc.message}")
        for detail in exc.details:
            note(f"  {detail}")
        return 1
    except KeyboardInterrupt:
        note("")
        return 130
    except BrokenPipeError:
        # `runyard run logs 7 | head`: the reader has gone; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        note(f"error:{where} {exc.strerror or exc}")
        return 1
    except Exception as exc:  # one clear line, never a traceback
        note(f"error: {exc.__class__.__name__}: {exc}")
        return 1
