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
