"""Issue 10 (creds): team registry and git credentials, inline secrets, interactive runs.

A real registry (Debian's docker-registry, htpasswd with bcrypt) on 127.0.0.1 that the
Docker engine pulls from; a real git smart-HTTP server (git http-backend behind a small
WSGI server with basic auth); the real Celery worker, PostgreSQL and Docker engine.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import yaml
from django.core.management import call_command

from runs import credentials, team_secrets
from runs.models import Credential, LogChunk, Run, RunEvent
from runs.services import create_run
from runs.spec import SpecError, dump_spec_yaml, parse_spec, parse_spec_with_secrets
from tests.conftest import BUSYBOX, Api, missing, wait_for, wait_until
from tests.test_imports_isolation import make_repo, remove_volumes

FINAL = {"completed", "failed", "terminated"}
REGISTRY_USER, REGISTRY_PASSWORD = "runner", "pw-Registry-7f3a9c"
GIT_TOKEN = "ghp_T0kenForTheTestServer4242"
INLINE_VALUE = "inl1ne-S3cret-value-0042"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_text(run: Run) -> str:
    return "\n".join(line for chunk in LogChunk.objects.filter(run=run) for _, _, line in chunk.lines)


def put(user, path: str, body: dict, **query):
    api = Api(user)
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return api.client.put(f"/api/v1{path}{suffix}", json.dumps(body), content_type="application/json", headers=api.headers)


def registry_credential(user, name: str, host: str, password: str = REGISTRY_PASSWORD):
    response = put(user, f"/credentials/{name}", {"kind": "registry", "host": host, "username": REGISTRY_USER, "password": password})
    assert response.status_code == 201, response.content
    return response.json()


def everything_shown(user, run: Run) -> str:
    """What the API shows of the run: itself, its events, its log."""
    api = Api(user)
    parts = [api.get(f"/runs/{run.pk}").content, api.get(f"/runs/{run.pk}/events").content, api.get(f"/runs/{run.pk}/logs.txt").getvalue()]
    return b"\n".join(parts).decode()


# ------------------------------------------------------------------ the spec's forms


@pytest.mark.parametrize(("source", "expected"), [
    ({"image": "img"}, {"image": "img", "image_credential": None}),
    ({"image": {"url": "ghcr.io/org/img:1", "credential_name": "ghcr"}}, {"image": "ghcr.io/org/img:1", "image_credential": "ghcr"}),
    ({"image": {"url": "img"}}, {"image": "img", "image_credential": None}),
    ({"import": {"/code/": {"git": {"url": "https://h/o/r.git", "ref": "main", "credential_name": "gh"}}}},
     {"import": {"/code/": {"git": {"url": "https://h/o/r.git", "ref": "main", "credential": "gh"}}}}),
    ({"env": {"T": {"value": "s3cr3t", "secret": True}, "P": {"value": "plain"}, "Q": {"value": "q", "secret": False}}},
     {"env": {"T": {"inline_secret": True}, "P": "plain", "Q": "q"}}),
    ({"interactive": {"max_runtime": "24h", "jupyter": {"idle_timeout": "120m"}}},
     {"interactive": {"max_runtime_seconds": 86400.0, "jupyter_idle_timeout_seconds": 7200.0}}),
    ({"interactive": {}}, {"interactive": {"max_runtime_seconds": None, "jupyter_idle_timeout_seconds": None}}),
    ({}, {"interactive": None, "image_credential": None}),
])
def test_the_vessl_forms_normalize_and_round_trip(source, expected):
    spec = parse_spec({"name": "n", "image": "img", "run": [{"command": "true"}], **source})
    assert {key: spec[key] for key in expected} == expected
    assert parse_spec(dump_spec_yaml(spec)) == spec


def test_an_inline_secret_value_never_enters_the_spec():
    source = "name: n\nimage: img\nrun: [{command: 'true'}]\nenv:\n  T: {value: " + INLINE_VALUE + ", secret: true}\n"
    spec, values = parse_spec_with_secrets(source)
    assert values == {"T": INLINE_VALUE}
    assert spec["env"] == {"T": {"inline_secret": True}}
    assert INLINE_VALUE not in json.dumps(parse_spec(source)) + dump_spec_yaml(spec)


@pytest.mark.parametrize(("source", "loc", "msg"), [
    ({"image": 3}, "image", "expected an image name, or a mapping with url and credential_name"),
    ({"image": {"credential_name": "r"}}, "image.url", "required"),
    ({"image": {"url": "i", "credential_name": "two words"}}, "image.credential_name",
     "expected a credential's name: letters, digits, _ . - (not first), at most 100"),
    ({"image": {"url": "i", "username": "u"}}, "image.username", "unknown key"),
    ({"import": {"/c/": {"git": {"url": "u", "credential_name": 5}}}}, 'import["/c/"].git.credential_name', "expected a string"),
    ({"env": {"T": {"value": "v", "secret": "yes"}}}, 'env["T"].secret', "expected a boolean"),
    ({"env": {"T": {"secret": False}}}, 'env["T"].value', "required"),
    ({"env": {"T": {"value": ["a"], "secret": True}}}, 'env["T"].value', "expected a string"),
    ({"interactive": True}, "interactive", "expected a mapping"),
    ({"interactive": {"max_runtime": "0s"}}, "interactive.max_runtime", "must be longer than 0 seconds"),
    ({"interactive": {"max_runtime": "a day"}}, "interactive.max_runtime", "expected a duration like 10s"),
    ({"interactive": {"jupyter": {"idle_timeout": "soon"}}}, "interactive.jupyter.idle_timeout", "expected a duration like 10s"),
    ({"interactive": {"jupyter": {"port": 8888}}}, "interactive.jupyter.port", "unknown key"),
])
def test_bad_forms_are_refused_naming_the_field(source, loc, msg):
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "n", "image": "img", "run": [{"command": "true"}], **source})
    assert caught.value.errors == [{"loc": loc, "msg": msg}]


# ------------------------------------------------------------------ credentials through the API


def test_credentials_are_stored_encrypted_and_never_shown_back(alice, bob, charlie, viola):
    created = registry_credential(alice, "reg", "Registry.Example.org:5000")
    assert created == {**created, "name": "reg", "kind": "registry", "host": "registry.example.org:5000", "username": REGISTRY_USER}
    stored = Credential.objects.get(name="reg")
    assert REGISTRY_PASSWORD.encode() not in bytes(stored.ciphertext)

    listed = Api(bob).get("/credentials")  # a teammate sees it, not its secret
    assert [item["name"] for item in listed.json()["items"]] == ["reg"]
    assert REGISTRY_PASSWORD not in listed.content.decode() + Api(bob).get("/credentials/reg").content.decode()
    assert Api(charlie).get("/credentials").json() == {"items": []}
    assert Api(charlie).get("/credentials/reg").status_code == 404
    assert put(viola, "/credentials/other", {"kind": "registry", "host": "h", "username": "u", "password": "p"}).status_code == 403

    replaced = put(alice, "/credentials/reg", {"kind": "registry", "host": "registry.example.org:5000", "username": "u2", "password": "p2"})
    assert replaced.status_code == 200 and replaced.json()["username"] == "u2"
    api = Api(charlie)
    assert api.client.delete("/api/v1/credentials/reg", headers=api.headers).status_code == 404
    api = Api(alice)
    assert api.client.delete("/api/v1/credentials/reg", headers=api.headers).json() == {"name": "reg", "deleted": True}
    assert not Credential.objects.exists()


@pytest.mark.parametrize(("body", "loc"), [
    ({"host": "h", "username": "u", "password": "p"}, "kind"),
    ({"kind": "registry", "host": "h", "password": "p"}, "username"),
    ({"kind": "registry", "host": "h", "username": "u"}, "password"),
    ({"kind": "registry", "host": "not a host", "username": "u", "password": "p"}, "host"),
    ({"kind": "registry", "host": "h", "username": "u", "password": "p", "token": "t"}, "token"),
    ({"kind": "git-token", "host": "github.com", "token": "two\nlines"}, "token"),
    ({"kind": "git-ssh", "host": "github.com", "private_key": "not a key"}, "private_key"),
])
def test_a_bad_credential_is_refused_naming_the_field(alice, body, loc):
    response = put(alice, "/credentials/c", body)
    assert response.status_code == 400, response.content
    assert loc in [error["loc"] for error in response.json()["errors"]], response.json()
    assert not Credential.objects.exists()


def test_a_run_names_a_credential_of_its_own_team_for_its_registry(alice, charlie):
    vision = alice.teams.get()
    credentials.set_credential(vision, "reg", kind="registry", host="registry.example.org", username="u", secret="p")
    credentials.set_credential(vision, "gh", kind="git-token", host="github.com", secret="t")
    cases = [
        (alice, {"url": "registry.example.org/team/img:1", "credential_name": "nope"}, "credential 'nope' not found in team vision"),
        (charlie, {"url": "registry.example.org/team/img:1", "credential_name": "reg"}, "credential 'reg' not found in team speech"),
        (alice, {"url": "elsewhere.example.com/team/img:1", "credential_name": "reg"},
         "credential 'reg' is for registry registry.example.org, and the image comes from elsewhere.example.com"),
        (alice, {"url": "registry.example.org/team/img:1", "credential_name": "gh"}, "credential 'gh' is a git-token credential, not a registry one"),
    ]
    for user, image, msg in cases:
        with pytest.raises(SpecError) as caught:
            create_run(user=user, source={"name": "n", "image": image, "run": [{"command": "true"}]}, executor="local")
        assert caught.value.errors == [{"loc": "image.credential_name", "msg": msg}]
    assert not Run.objects.exists()


def test_a_team_admin_adds_a_credential_in_the_admin(tina, charlie):
    from django.test import Client

    from runs.models import Team

    client = Client()
    client.force_login(tina)
    form = {"team": Team.objects.get(name="speech").pk, "name": "reg", "kind": "registry", "host": "r.example.org",
            "username": "u", "password": REGISTRY_PASSWORD, "known_hosts": "", "private_key": ""}
    refused = client.post("/admin/runs/credential/add/", form)
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    no_password = client.post("/admin/runs/credential/add/", {**form, "team": Team.objects.get(name="vision").pk, "password": ""})
    assert no_password.status_code == 200 and "password must be a non-empty string" in no_password.content.decode()
    stored = client.post("/admin/runs/credential/add/", {**form, "team": Team.objects.get(name="vision").pk})
    assert stored.status_code == 302, stored.content.decode()[-2000:]
    credential = Credential.objects.get(name="reg")
    assert credential.team.name == "vision" and credential.username == "u"
    assert REGISTRY_PASSWORD not in client.get(f"/admin/runs/credential/{credential.pk}/change/").content.decode()


def test_rotating_keys_keeps_credentials_and_inline_secrets(alice, settings):
    settings.RUNYARD_SECRETS_KEY = "old-key"
    credentials.set_credential(alice.teams.get(), "gh", kind="git-token", host="github.com", secret=GIT_TOKEN)
    run = create_run(user=alice, executor="local", source={
        "name": "n", "image": BUSYBOX, "run": [{"command": "true"}], "env": {"T": {"value": INLINE_VALUE, "secret": True}}})
    settings.RUNYARD_SECRETS_KEY = "new-key, old-key"
    call_command("rotate_secrets", stdout=open(os.devnull, "w"))
    settings.RUNYARD_SECRETS_KEY = "new-key"
    assert credentials._secret(Credential.objects.get(name="gh")) == GIT_TOKEN
    assert team_secrets.open_inline_values(Run.objects.get(pk=run.pk)) == {"T": INLINE_VALUE}


# ------------------------------------------------------------------ a private registry


@dataclass
class Registry:
    host: str
    image: str  # what the engine has only by pulling it


def bcrypt_hash(password: str) -> str:
    """htpasswd's bcrypt line, without apache2-utils: the bcrypt package, else libcrypt."""
    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            missing("no bcrypt: install the bcrypt package (Python 3.13 has no crypt module)")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@pytest.fixture(scope="module")
def registry(docker_engine, tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 with a username and password (the engine
    pulls from a 127.0.0.1 registry over plain HTTP), holding busybox under a private
    name that the engine does not have."""
    if shutil.which("docker-registry") is None:
        missing("docker-registry is not installed (apt-get install docker-registry)")
    folder = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{free_port()}"
    (folder / "htpasswd").write_text(f"{REGISTRY_USER}:{bcrypt_hash(REGISTRY_PASSWORD)}\n")
    (folder / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": host}, "auth": {"htpasswd": {"realm": "runyard-test", "path": str(folder / "htpasswd")}},
    }))
    process = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")], stdout=open(folder / "registry.log", "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    image = f"{host}/private/busybox:latest"
    try:
        def answers():
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                return exc.code == 401
            except OSError:
                return False
            return False

        wait_until(answers, 15, "the registry")
        config = str(folder / "docker-config")  # the login stays here, not in this host's ~/.docker
        subprocess.run(["docker", "--config", config, "login", host, "-u", REGISTRY_USER, "--password-stdin"],
                       input=REGISTRY_PASSWORD, check=True, capture_output=True, text=True)
        docker_engine.images.get(BUSYBOX).tag(f"{host}/private/busybox", "latest")
        subprocess.run(["docker", "--config", config, "push", image], check=True, capture_output=True)
        docker_engine.images.remove(image)  # a run must pull it
        yield Registry(host, image)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        try:
            docker_engine.images.remove(image)
        except Exception:  # not pulled, or removed already
            pass


def private_run(user, registry: Registry, credential: str | None, name: str = "private") -> Run:
    image = {"url": registry.image, "credential_name": credential} if credential else registry.image
    return create_run(user=user, executor="docker", source={
        "name": name, "image": image, "run": [{"command": "echo from-the-private-registry"}]})


def test_a_private_image_runs_with_its_credential_and_fails_cleanly_without_it(alice, engine, registry):
    registry_credential(alice, "reg", registry.host)
    run = wait_for(private_run(alice, registry, "reg").pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    assert "from-the-private-registry" in log_text(run)
    assert run.spec["image"] == registry.image and run.spec["image_credential"] == "reg"
    assert REGISTRY_PASSWORD not in everything_shown(alice, run) + json.dumps(run.spec)

    # The engine has the image now: a run without the credential is still refused by the registry.
    refused = wait_for(private_run(alice, registry, None, "no-login").pk, FINAL, removed=True)
    assert refused.status == "failed"
    assert refused.status_reason.startswith(f"image {registry.image}: registry {registry.host} needs a login: "
                                            "name a registry credential of your team with image: {url, credential_name}")
    assert [(e.from_status, e.to_status) for e in RunEvent.objects.filter(run=refused)][-1] == ("initializing", "failed")

    registry_credential(alice, "reg-wrong", registry.host, password="not-the-password")
    wrong = wait_for(private_run(alice, registry, "reg-wrong", "wrong-login").pk, FINAL, removed=True)
    assert wrong.status == "failed"
    assert wrong.status_reason.startswith(f"image {registry.image}: registry {registry.host} refused credential 'reg-wrong' ("), wrong.status_reason
    assert "not-the-password" not in everything_shown(alice, wrong)


# ------------------------------------------------------------------ git over HTTPS with a token


def processes_showing(secret: str) -> list[str]:
    """Every process whose command line (what `ps` shows) or environment holds `secret`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                if secret.encode() in (entry / part).read_bytes():
                    found.append(f"{entry.name} {part}: {(entry / 'cmdline').read_bytes()[:200]!r}")
            except OSError:  # it ended, or is not ours to read
                pass
    return found


class GitServer:
    """git http-backend (smart HTTP) behind basic auth. While it answers a request, the
    git that asked is waiting for it: every process is looked at then for the token."""

    def __init__(self, root: Path, username: str, token: str):
        self.root, self.expected = root, "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()
        self.token, self.served, self.refused, self.leaks, self.git_seen = token, 0, 0, [], 0

    def __call__(self, environ, start_response):
        if environ.get("HTTP_AUTHORIZATION") != self.expected:
            self.refused += 1
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")])
            return [b"log in\n"]
        self.served += 1
        self.leaks += processes_showing(self.token)
        self.git_seen += bool(processes_showing(self.url))  # the git that waits for this answer, named by its URL
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        cgi = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": environ["PATH_INFO"], "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "runner", "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""), "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
        }
        output = subprocess.run(["git", "http-backend"], input=body, env=cgi, capture_output=True, timeout=60).stdout
        head, _, payload = output.partition(b"\r\n\r\n") if b"\r\n\r\n" in output else output.partition(b"\n\n")
        status, headers = "200 OK", []
        for line in head.decode().splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = value.strip()
            elif key:
                headers.append((key.strip(), value.strip()))
        start_response(status, headers)
        return [payload]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def git_server(tmp_path):
    source = make_repo(tmp_path / "model-code", {"weights.txt": "private weights of team vision\n"})
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(tmp_path / "served" / "model.git")], check=True)
    app = GitServer(tmp_path / "served", credentials.DEFAULT_GIT_USERNAME, GIT_TOKEN)
    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="git-server", daemon=True)
    thread.start()
    app.host = f"127.0.0.1:{server.server_port}"
    app.url = f"http://{app.host}/model.git"
    yield app
    server.shutdown()
    server.server_close()


def git_run_source(url: str, credential: str | None) -> dict:
    git = {"url": url, "ref": "main", **({"credential_name": credential} if credential else {})}
    return {"name": "reads-private-code", "image": BUSYBOX, "import": {"/code/": {"git": git}},
            "run": [{"command": "cat /code/weights.txt"}]}


def logins_left_behind() -> list[str]:
    return [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("runyard-git-login-")]


def test_a_git_import_over_https_logs_in_with_a_token_that_shows_nowhere(alice, charlie, engine, docker_engine, git_server):
    before = logins_left_behind()
    refused = Api(alice).post("/runs", json.dumps(git_run_source(git_server.url, None)), "application/json")
    assert refused.status_code == 400
    error = refused.json()["errors"][0]
    assert error["loc"] == 'import["/code/"].git.url'
    assert error["msg"].startswith(f"could not read {git_server.url}: it needs a login: name a git credential of your team with credential_name")

    response = put(alice, "/credentials/gh", {"kind": "git-token", "host": git_server.host, "token": GIT_TOKEN})
    assert response.status_code == 201 and GIT_TOKEN not in response.content.decode()
    other_team = Api(charlie).post("/runs", json.dumps(git_run_source(git_server.url, "gh")), "application/json")
    assert other_team.json()["errors"] == [{"loc": 'import["/code/"].git.credential_name', "msg": "credential 'gh' not found in team speech"}]

    created = Api(alice).post("/runs", json.dumps(git_run_source(git_server.url, "gh")), "application/json")
    assert created.status_code == 201, created.content
    try:
        run = wait_for(created.json()["id"], FINAL, removed=True)
    finally:
        remove_volumes(docker_engine, Run.objects.get(pk=created.json()["id"]).spec["import"]["/code/"]["git"]["commit"])
    assert run.status == "completed", run.status_reason
    assert "private weights of team vision" in log_text(run)
    assert run.spec["import"]["/code/"]["git"]["credential"] == "gh"
    # Asked at creation (the ref) and at the start (the commit), and seen by no process meanwhile.
    assert git_server.served >= 2 and git_server.git_seen == git_server.served and git_server.leaks == []
    assert GIT_TOKEN not in everything_shown(alice, run) + json.dumps(run.spec) + json.dumps(run.imports)
    assert logins_left_behind() == before


def test_a_git_credential_is_sent_only_to_its_own_host(alice, git_server):
    credentials.set_credential(alice.teams.get(), "gh", kind="git-token", host="github.com", secret=GIT_TOKEN)
    with pytest.raises(SpecError) as caught:
        create_run(user=alice, source=git_run_source(git_server.url, "gh"), executor="docker")
    assert caught.value.errors == [{"loc": 'import["/code/"].git.credential_name',
                                    "msg": f"credential 'gh' is for github.com, and {git_server.url} is on {git_server.host}"}]
    assert git_server.refused == 0 and git_server.served == 0  # not even asked


@pytest.mark.parametrize(("kind", "url", "msg"), [
    ("git-token", "http://git.example.org/team/model.git",
     "credential 'git' is sent over https:// only (http:// only to this machine); http://git.example.org/team/model.git is http://"),
    ("git-token", "git@git.example.org:team/model.git",
     "credential 'git' holds a token, for https:// URLs; git@git.example.org:team/model.git is not one"),
    ("git-ssh", "https://git.example.org/team/model.git",
     "credential 'git' holds an SSH key, for ssh:// or git@host:path URLs; https://git.example.org/team/model.git is not one"),
    ("registry", "https://git.example.org/team/model.git", "credential 'git' is a registry credential, not a git one"),
])
def test_a_git_credential_fits_its_url_or_the_run_is_refused(alice, kind, url, msg):
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n" if kind == "git-ssh" else "t0ken"
    credentials.set_credential(alice.teams.get(), "git", kind=kind, host="git.example.org", username="u", secret=secret)
    with pytest.raises(SpecError) as caught:
        create_run(user=alice, source=git_run_source(url, "git"), executor="docker")
    assert caught.value.errors == [{"loc": 'import["/code/"].git.credential_name', "msg": msg}]


def test_an_ssh_key_goes_to_ssh_as_a_file_that_is_removed_after(alice, tmp_path):
    """No SSH server here: a closed port shows that ssh took the key file and its
    options as given (a wrong option is refused before it connects)."""
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        missing("ssh is not installed (apt-get install openssh-client)")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    key = (tmp_path / "key").read_text()
    credentials.set_credential(alice.teams.get(), "deploy", kind="git-ssh", host="127.0.0.1", secret=key,
                               known_hosts="127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDn6oOcfvIaVYcwgSeHvbwbA7AbxNRdrX1E0wAqOTCC7\n")
    before = logins_left_behind()
    url = f"ssh://git@127.0.0.1:{free_port()}/team/model.git"
    with pytest.raises(SpecError) as caught:
        create_run(user=alice, source=git_run_source(url, "deploy"), executor="docker")
    [error] = caught.value.errors
    assert error["loc"] == 'import["/code/"].git.url'
    assert error["msg"].startswith(f"could not read {url}: ") and "Connection refused" in error["msg"], error["msg"]
    assert logins_left_behind() == before
    assert "PRIVATE KEY" not in error["msg"]


# ------------------------------------------------------------------ inline secrets


def test_an_inline_secret_reaches_the_run_masked_and_is_kept_for_reproduce(alice, engine, docker_engine):
    source = {
        "name": "inline", "image": BUSYBOX,
        "env": {"TOKEN": {"value": INLINE_VALUE, "secret": True}, "PLAIN": {"value": "shown"}},
        # The value compared in two halves: the command itself is in the spec.
        "run": [{"command": f'echo "token=$TOKEN plain=$PLAIN"; [ "$TOKEN" = "{INLINE_VALUE[:8]}""{INLINE_VALUE[8:]}" ] && echo token-arrived'}],
    }
    created = Api(alice).post("/runs", json.dumps(source), "application/json")
    assert created.status_code == 201 and INLINE_VALUE not in created.content.decode()
    run = wait_for(created.json()["id"], FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    assert "token=******** plain=shown" in log_text(run) and "token-arrived" in log_text(run)
    assert run.spec["env"] == {"TOKEN": {"inline_secret": True}, "PLAIN": "shown"}
    assert INLINE_VALUE.encode() not in bytes(run.inline_secrets_ciphertext)

    again = Api(alice).post(f"/runs/{run.pk}/reproduce", "", "application/json")
    assert again.status_code == 201, again.content
    copy = wait_for(again.json()["id"], FINAL, removed=True)
    assert copy.status == "completed", copy.status_reason
    assert "token-arrived" in log_text(copy)
    for shown in (run, copy):
        assert INLINE_VALUE not in everything_shown(alice, shown) + json.dumps(shown.spec) + dump_spec_yaml(shown.spec)


# ------------------------------------------------------------------ interactive runs


def interactive_run(user, command: str, interactive: dict) -> Run:
    return create_run(user=user, executor="docker", source={
        "name": "workspace", "image": BUSYBOX, "run": [{"command": command}], "interactive": interactive})


def test_an_interactive_run_is_kept_alive_then_ended_at_its_max_runtime(alice, engine, docker_engine):
    run = wait_for(interactive_run(alice, "echo ready", {"max_runtime": "5s"}).pk, "idle")
    assert run.status_reason == "command ended with exit code 0; kept alive (interactive)"
    run = wait_for(run.pk, "terminated", timeout=30, removed=True)
    last = RunEvent.objects.filter(run=run).last()
    assert (last.from_status, last.to_status, last.actor_name, last.reason) == ("idle", "terminated", "system", "max runtime")
    assert (last.at - run.started_at).total_seconds() >= 5


def test_jupyter_idle_timeout_without_jupyter_in_the_image_says_so(alice, engine, docker_engine):
    run = interactive_run(alice, "sleep 60", {"max_runtime": "3s", "jupyter": {"idle_timeout": "120m"}})
    run = wait_for(run.pk, "terminated", timeout=30, removed=True)
    assert run.status_reason == "max runtime"
    assert "Jupyter was not found in the image; jupyter.idle_timeout is ignored" in log_text(run)
    assert [(e.from_status, e.to_status) for e in RunEvent.objects.filter(run=run)][-1] == ("running", "terminated")


def test_the_cli_keeps_credentials_off_its_command_line(cli_as_alice):
    created = cli_as_alice("credential", "create", "reg", "--kind", "registry", "--host", "r.example.org:5000",
                           "--username", REGISTRY_USER, "--password-stdin", stdin=REGISTRY_PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "credential reg created: registry for r.example.org:5000"
    listed = cli_as_alice("credential", "list")
    assert listed.returncode == 0 and "reg" in listed.stdout and REGISTRY_USER in listed.stdout
    assert REGISTRY_PASSWORD not in listed.stdout + cli_as_alice("--json", "credential", "list").stdout
    assert credentials._secret(Credential.objects.get(name="reg")) == REGISTRY_PASSWORD
    no_stdin = cli_as_alice("credential", "create", "reg2", "--kind", "registry", "--host", "h", "--username", "u", stdin="")
    assert no_stdin.returncode == 1 and no_stdin.stderr.startswith("error: give the password on stdin with --password-stdin")
    deleted = cli_as_alice("credential", "delete", "reg")
    assert deleted.returncode == 0 and not Credential.objects.exists()


@pytest.fixture
def cli_as_alice(console_url, alice, engine, tmp_path):
    def run(*args, stdin: str = ""):
        env = {**os.environ, "HOME": str(tmp_path), "RUNYARD_URL": console_url, "RUNYARD_TOKEN": alice.token}
        return subprocess.run([sys.executable, "-m", "runyard", *args], cwd=Path(__file__).resolve().parent.parent,
                              env=env, input=stdin, capture_output=True, text=True, timeout=60)

    return run
