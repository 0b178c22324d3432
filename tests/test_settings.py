"""Settings come from the environment and reject bad values with a clear message."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start_django(tmp_path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'], settings.RUNYARD_TASKS_IN_PROCESS)"],
        cwd=ROOT, env={**base, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "RUNYARD_VAR_DIR": str(tmp_path), **env},
        capture_output=True, text=True, timeout=60,
    )


def test_the_embedded_default_needs_no_configuration(tmp_path):
    result = start_django(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", "True"]
    assert (tmp_path / "secret_key").exists()


def test_a_full_deployment_uses_postgresql_and_celery(tmp_path):
    result = start_django(tmp_path, DATABASE_URL="postgres://u@127.0.0.1/x", REDIS_URL="redis://127.0.0.1:6379/0", SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "False"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe'"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379'"),
        ({"RUNYARD_EXECUTOR": "kubernetes"}, "RUNYARD_EXECUTOR='kubernetes'"),
        ({"RUNYARD_RECONCILE_SECONDS": "soon"}, "RUNYARD_RECONCILE_SECONDS='soon'"),
        ({"RUNYARD_TERMINAL_KEEP_SECONDS": "-1"}, "RUNYARD_TERMINAL_KEEP_SECONDS='-1'"),
        ({"RUNYARD_INSTANCE_ID": "Has Spaces"}, "RUNYARD_INSTANCE_ID='Has Spaces'"),
        ({"DATABASE_URL": "postgres://u@h/x"}, "SECRET_KEY must be set"),
        ({"DATABASE_URL": "nonsense://x", "SECRET_KEY": "k"}, "DATABASE_URL"),
    ],
)
def test_it_rejects_bad_values_naming_the_variable(tmp_path, env, message):
    result = start_django(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def settings_value(tmp_path, expression: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "RUNYARD_SECRETS_KEY")}
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); from django.conf import settings; print(repr({expression}))"],
        cwd=ROOT, env={**base, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "RUNYARD_VAR_DIR": str(tmp_path), **env},
        capture_output=True, text=True, timeout=60,
    )


def check_deploy(tmp_path, **env) -> subprocess.CompletedProcess:
    # Without the tests' own DJANGO_ALLOW_ASYNC_UNSAFE (conftest), which the check rightly flags.
    skip = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE")
    base = {k: v for k, v in os.environ.items() if k not in skip}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT, env={**base, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "RUNYARD_VAR_DIR": str(tmp_path),
                       "SECRET_KEY": "a-real-key-" + "x7Qp2vL9" * 7, "DEBUG": "false", **env},
        capture_output=True, text=True, timeout=120,
    )


def test_https_switch_makes_check_deploy_clean(tmp_path):
    plain = check_deploy(tmp_path)
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in plain.stderr + plain.stdout
    served_over_https = check_deploy(tmp_path, RUNYARD_HTTPS="true")
    assert served_over_https.returncode == 0, served_over_https.stderr
    assert "System check identified no issues" in served_over_https.stdout
    assert "WARNING" not in served_over_https.stderr + served_over_https.stdout


def test_https_switch_sets_hsts_cookies_and_the_proxy_header(tmp_path):
    result = settings_value(
        tmp_path,
        "(settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS, settings.SECURE_HSTS_PRELOAD, settings.SECURE_SSL_REDIRECT,"
        " settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.SECURE_PROXY_SSL_HEADER)",
        RUNYARD_HTTPS="yes", RUNYARD_HSTS_SECONDS="3600", RUNYARD_HSTS_PRELOAD="false",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3600, True, False, True, True, True, ('HTTP_X_FORWARDED_PROTO', 'https'))"
    off = settings_value(tmp_path, "(settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE)")
    assert off.stdout.strip() == "(False, False)"


def test_an_https_console_redirects_plain_http_but_not_the_health_check(tmp_path):
    code = (
        "from django.test import Client; c = Client();"
        "print(c.get('/accounts/login/').status_code, c.get('/accounts/login/').headers.get('Location'), sep='|', end='|');"
        "print("
        " c.get('/accounts/login/', headers={'X-Forwarded-Proto': 'https'}).headers.get('Strict-Transport-Security'),"
        " c.get('/api/v1/health').status_code, sep='|')"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup();" + code],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "RUNYARD_HTTPS": "true",
                       "ALLOWED_HOSTS": "testserver"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status, location, hsts, health = result.stdout.strip().split("|")
    assert (status, location) == ("301", "https://testserver/accounts/login/")
    assert hsts == "max-age=31536000; includeSubDomains; preload"
    assert health != "301"  # answered (200, or 503 as this database is not set up), not redirected


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "RUNYARD_SECRETS_KEY"])
def test_a_secret_can_come_from_a_file(tmp_path, name):
    value = {"SECRET_KEY": "from-a-file-" + "k" * 40, "DATABASE_URL": "postgres://u:p@db.example/runyard",
             "RUNYARD_SECRETS_KEY": "secrets-key-from-a-file"}[name]
    secret = tmp_path / "secret"
    secret.write_text(value + "\n")  # as `echo value > file` writes it
    env = {f"{name}_FILE": str(secret)}
    if name == "DATABASE_URL":
        env["SECRET_KEY"] = "k" * 50
    result = settings_value(tmp_path, f"settings.{name}", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(value)
    if name == "DATABASE_URL":
        engine = settings_value(tmp_path, "settings.DATABASES['default']['HOST']", **env)
        assert engine.stdout.strip() == "'db.example'"


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "RUNYARD_SECRETS_KEY"])
def test_a_secret_and_its_file_together_are_refused_naming_both(tmp_path, name):
    secret = tmp_path / "secret"
    secret.write_text("postgres://u@h/x")
    result = settings_value(tmp_path, "1", **{name: "postgres://u@h/y", f"{name}_FILE": str(secret)})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"both {name} and {name}_FILE are set" in result.stderr


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "RUNYARD_SECRETS_KEY"])
def test_a_missing_or_empty_secret_file_is_refused_naming_it(tmp_path, name):
    missing_file = tmp_path / "no-such-file"
    result = settings_value(tmp_path, "1", **{f"{name}_FILE": str(missing_file)})
    assert result.returncode != 0
    assert f"{name}_FILE='{missing_file}': cannot read the file (No such file or directory)" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = settings_value(tmp_path, "1", **{f"{name}_FILE": str(empty)})
    assert result.returncode != 0
    assert f"{name}_FILE='{empty}': the file is empty" in result.stderr


def _sign_in(client, username, password, path="/accounts/login/", address="10.1.1.1"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_repeated_failed_sign_ins_lock_out_even_the_right_password(alice, client, settings):
    limit = settings.RUNYARD_LOGIN_FAILURE_LIMIT
    for _ in range(limit - 1):
        response = _sign_in(client, "alice", "wrong")
        assert response.status_code == 200
        assert b"didn't match" in response.content
    locked = _sign_in(client, "alice", "wrong")
    assert locked.status_code == 429
    assert b"Too many failed sign-ins" in locked.content
    assert b"Try again in 15 minutes" in locked.content
    assert locked["Retry-After"] == "900"
    refused = _sign_in(client, "alice", "pw-alice")
    assert refused.status_code == 429
    assert b"Try again in 15 minutes" in refused.content
    assert "_auth_user_id" not in client.session
    # The lock holds that username from that address: alice elsewhere still signs in.
    elsewhere = _sign_in(client, "alice", "pw-alice", address="10.2.2.2")
    assert elsewhere.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_a_successful_sign_in_resets_the_count(alice, client, settings):
    limit = settings.RUNYARD_LOGIN_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _sign_in(client, "alice", "wrong").status_code == 200
    assert _sign_in(client, "alice", "pw-alice").status_code == 302
    client.logout()
    for _ in range(limit - 1):
        assert _sign_in(client, "alice", "wrong").status_code == 200
    assert _sign_in(client, "alice", "pw-alice").status_code == 302


def test_the_admin_sign_in_is_throttled_too(defaults, client, settings, django_user_model):
    django_user_model.objects.create_superuser("root", "root@example.org", "pw-root")
    for _ in range(settings.RUNYARD_LOGIN_FAILURE_LIMIT):
        response = _sign_in(client, "root", "wrong", path="/admin/login/?next=/admin/")
    assert response.status_code == 429
    refused = _sign_in(client, "root", "pw-root", path="/admin/login/?next=/admin/")
    assert refused.status_code == 429
    assert b"Too many failed sign-ins for <strong>root</strong>" in refused.content


def test_the_limit_and_the_wait_are_settings(tmp_path):
    result = settings_value(tmp_path, "(settings.RUNYARD_LOGIN_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME.total_seconds())",
                            RUNYARD_LOGIN_FAILURE_LIMIT="3", RUNYARD_LOGIN_COOLOFF_MINUTES="2")
    assert result.stdout.strip() == "(3, 120.0)"
    bad = settings_value(tmp_path, "1", RUNYARD_LOGIN_FAILURE_LIMIT="0")
    assert "RUNYARD_LOGIN_FAILURE_LIMIT='0'" in bad.stderr


def test_the_client_address_comes_from_the_proxies_only_as_far_as_they_are_trusted(rf, settings):
    from runs.throttle import client_ip

    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    settings.RUNYARD_PROXY_COUNT = 0
    assert client_ip(request) == "10.0.0.1"
    settings.RUNYARD_PROXY_COUNT = 1
    assert client_ip(request) == "203.0.113.7"


def test_a_locked_out_browser_is_told_when_to_retry(transactional_db, alice, chromium, console_url, settings):
    """Through the live console (Daphne, axes' async middleware path) and a real browser."""
    context = chromium.new_context(base_url=console_url)
    page = context.new_page()
    try:
        for password in ["wrong"] * settings.RUNYARD_LOGIN_FAILURE_LIMIT + ["pw-alice"]:
            page.goto(console_url + "/accounts/login/")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state()
        alert = page.get_by_role("alert")
        assert "Too many failed sign-ins for alice from your address. Try again in 15 minutes (after" in alert.inner_text()
        assert page.url == console_url + "/accounts/login/"
        page.goto(console_url + "/")
        assert page.url.startswith(console_url + "/accounts/login/")  # not signed in
    finally:
        context.close()


def test_unknown_tokens_on_the_api_are_throttled_per_address(alice, client, settings):
    def call(token, address="10.5.5.5"):
        return client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}, REMOTE_ADDR=address)

    for _ in range(settings.RUNYARD_TOKEN_FAILURE_LIMIT - 1):
        assert call("not-a-token").status_code == 401
    assert call(alice.token).status_code == 200
    locked = call("not-a-token")
    assert locked.status_code == 429
    assert locked.json()["detail"].startswith("too many unknown tokens from your address: try again in 15 minutes")
    assert locked.json()["errors"][0]["loc"] == "Authorization"
    assert call(alice.token).status_code == 429  # a guesser learns nothing, even with a good token
    assert call(alice.token, address="10.6.6.6").status_code == 200


def test_sign_in_attempts_are_listed_in_the_admin_for_superusers_only(tina, client, django_user_model):
    _sign_in(client, "tina", "wrong")
    client.force_login(tina)
    assert b"Access attempts" not in client.get("/admin/").content
    assert client.get("/admin/axes/accessattempt/").status_code in (302, 403, 404)
    root = django_user_model.objects.create_superuser("root", "root@example.org", "pw-root")
    client.force_login(root)
    assert b"Access attempts" in client.get("/admin/").content
    listing = client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and b"tina" in listing.content
