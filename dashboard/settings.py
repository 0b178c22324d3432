"""Runyard settings: one file, every knob from the environment.

With no configuration Runyard runs on its embedded default: SQLite under var/,
tasks in-process, an in-memory channel layer, Docker if reachable. DATABASE_URL and
REDIS_URL switch to PostgreSQL, Celery workers and channels-redis.
"""

import os
import re
import socket
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str) -> str:
    """NAME, or the content of the file NAME_FILE names (Docker and Kubernetes secrets
    are files, and a value in a file stays out of the process table and `env`)."""
    value = env_str(name)
    path = env_str(name + "_FILE")
    if not path:
        return value
    if value:
        raise ImproperlyConfigured(f"both {name} and {name}_FILE are set: set one of them")
    try:
        content = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ImproperlyConfigured(f"{name}_FILE={path!r}: cannot read the file ({reason})") from None
    content = content.removesuffix("\n").removesuffix("\r")  # what `echo` and editors add
    if not content.strip():
        raise ImproperlyConfigured(f"{name}_FILE={path!r}: the file is empty")
    return content


VAR_DIR = Path(env_str("RUNYARD_VAR_DIR") or BASE_DIR / "var")
(VAR_DIR / "static").mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
DATABASE_URL = env_secret("DATABASE_URL")
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and DATABASE_URL:
        raise ImproperlyConfigured("SECRET_KEY must be set for a full deployment (DATABASE_URL is set)")
    # The embedded default keeps a generated key in var/ so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        from runs.private_files import write_private  # os and pathlib only: safe before Django is set up

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        write_private(key_file, secrets.token_urlsafe(50))  # 0600 from the first byte
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "dashboard.admin_config.RunyardAdminConfig",  # django.contrib.admin, open to team admins too
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "runs",
    "dashboard",
    "terminal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    except Exception as exc:  # dj_database_url raises bare ValueErrors with little context
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "runyard.sqlite3",
            # Several threads write (tasks in-process): wait for the lock instead of failing.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r}: expected a redis:// URL")

# Tasks: Celery over Redis in a full deployment; the same task functions on an
# in-process thread pool in the embedded default.
RUNYARD_TASKS_IN_PROCESS = env_bool("RUNYARD_TASKS_IN_PROCESS", not REDIS_URL)
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Collectors hold a thread for as long as a run runs: they get a queue (and workers)
# of their own, so start and terminate never wait behind them (README, "Full deployment").
CELERY_TASK_QUEUES = {name: {"exchange": name, "routing_key": name} for name in ("control", "collect")}  # no -Q: both
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_TASK_ROUTES = {"runs.tasks.collect": {"queue": "collect"}}
RUNYARD_RECONCILE_SECONDS = env_int("RUNYARD_RECONCILE_SECONDS", 15, 1)
CELERY_BEAT_SCHEDULE = {
    "reconcile-runs": {"task": "runs.tasks.reconcile", "schedule": float(RUNYARD_RECONCILE_SECONDS)},
}
# A Swarm node whose engine has not answered for this long, or that its manager
# reports down, is lost: its runs end `failed` naming it (SPEC §7). One reconcile
# period by default, so a lost node's runs end within two.
RUNYARD_NODE_LOST_SECONDS = env_int("RUNYARD_NODE_LOST_SECONDS", RUNYARD_RECONCILE_SECONDS, 1)

if REDIS_URL:
    # A consumer waits for its next message in a blocking read of 5 s (channels-redis).
    # redis-py 8 gives up on any read after 5 s unless told otherwise, which ended every
    # websocket that had been quiet for about 6 s; so the channel layer's sockets have
    # no timeout. Nor may they have one: with a timeout, redis-py sends each command
    # through asyncio.wait_for, which on Python 3.11 can swallow a cancellation that
    # lands as the send finishes, and a consumer's cancelled receive then waits on
    # Redis for good (one in a few closes of a socket still connecting to Redis).
    # A dead Redis is found by TCP keepalive instead: about a minute.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{
        "address": REDIS_URL,
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "socket_keepalive_options": {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 3},
    }]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Executor: "docker", "local", or "auto" (Docker if the engine answers, else local).
RUNYARD_EXECUTOR = env_str("RUNYARD_EXECUTOR", "auto")
if RUNYARD_EXECUTOR not in ("auto", "docker", "local"):
    raise ImproperlyConfigured(f"RUNYARD_EXECUTOR={RUNYARD_EXECUTOR!r}: expected auto, docker or local")
if RUNYARD_EXECUTOR == "local" and DATABASE_URL and not env_bool("RUNYARD_ALLOW_LOCAL_EXECUTOR", False):
    # Local processes run as the console's own user: only for a single-user embedded install.
    raise ImproperlyConfigured("RUNYARD_EXECUTOR=local is for the embedded default only")
DOCKER_HOST = env_str("DOCKER_HOST")
RUNYARD_DOCKER_NETWORK = env_str("RUNYARD_DOCKER_NETWORK", "none")
RUNYARD_LOCAL_RUNS_DIR = VAR_DIR / "local-runs"
# A collector that has not reported for this long is presumed dead and replaced.
RUNYARD_COLLECTOR_LEASE_SECONDS = env_int("RUNYARD_COLLECTOR_LEASE_SECONDS", 30, 5)
# Runs holding a slot (initializing, running, stopping) at once in the installation;
# more wait `pending`. A team's own cap is Team.max_running (runs.slots).
RUNYARD_MAX_RUNNING = env_int("RUNYARD_MAX_RUNNING", 100, 1)
# The embedded default's collector threads (one per running run): by default one per slot.
RUNYARD_COLLECTOR_THREADS = env_int("RUNYARD_COLLECTOR_THREADS", RUNYARD_MAX_RUNNING, 1)
# Which installation's containers are ours (their runyard.instance label). Unset:
# made once and kept in the database. Set it to pin it, e.g. for the tests' worker.
RUNYARD_INSTANCE_ID = env_str("RUNYARD_INSTANCE_ID")
if RUNYARD_INSTANCE_ID and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", RUNYARD_INSTANCE_ID):
    raise ImproperlyConfigured(f"RUNYARD_INSTANCE_ID={RUNYARD_INSTANCE_ID!r}: expected 1-32 of a-z, 0-9 and -")
# A web terminal whose browser dropped is kept this long for it to come back.
RUNYARD_TERMINAL_KEEP_SECONDS = env_int("RUNYARD_TERMINAL_KEEP_SECONDS", 60, 0)
# Terminals (shells and attaches) one user may hold open at once, in one server process.
RUNYARD_TERMINAL_MAX_SESSIONS = env_int("RUNYARD_TERMINAL_MAX_SESSIONS", 8, 1)
# A run's ports (runs/ports.py): a statically linked BusyBox, copied into a Docker run
# to relay its ports from inside it (runs/executors/static_relay.py).
RUNYARD_PORT_RELAY = env_str("RUNYARD_PORT_RELAY", "/bin/busybox")
# `tcp` ports in a run file: `refuse` (the run is not created, the reason names the
# port) or `accept` (created; its tcp ports are reachable only from inside the run).
RUNYARD_TCP_PORTS = env_str("RUNYARD_TCP_PORTS", "refuse")
if RUNYARD_TCP_PORTS not in ("refuse", "accept"):
    raise ImproperlyConfigured(f"RUNYARD_TCP_PORTS={RUNYARD_TCP_PORTS!r}: expected refuse or accept")
# A console process not heard from this long (killed, its machine lost) is gone: the
# reconciler ends its terminal sessions on record, "console lost" (terminal.consoles).
RUNYARD_CONSOLE_LOST_SECONDS = env_int("RUNYARD_CONSOLE_LOST_SECONDS", 60, 4)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
# Serve static files straight from the source folders: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = VAR_DIR / "files"
# Stored files hold what runs wrote: readable by the console's own user only.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

# Bounds on what a run's output can cost (runs/logstore.py, runs/reports.py).
# A longer log line is stored cut, ending in "… [truncated N bytes]".
RUNYARD_LOG_LINE_MAX_BYTES = env_int("RUNYARD_LOG_LINE_MAX_BYTES", 64 * 1024, 1024)
# A page of log lines (the API's /logs, the log websocket's batches, search) stops near this size.
RUNYARD_LOG_PAGE_MAX_BYTES = env_int("RUNYARD_LOG_PAGE_MAX_BYTES", 4 * 1024 * 1024, 64 * 1024)
# Metric names a run may report; reports adding names past it are counted as malformed.
RUNYARD_METRIC_KEYS_MAX = env_int("RUNYARD_METRIC_KEYS_MAX", 1000, 1)
# How often a running run's CPU % and memory are read and stored as sys/ metrics (0: never).
RUNYARD_SYSTEM_METRICS_SECONDS = env_int("RUNYARD_SYSTEM_METRICS_SECONDS", 5, 0)
# A running run whose reported progress has not moved for this long shows `stalled`.
RUNYARD_STALLED_SECONDS = env_int("RUNYARD_STALLED_SECONDS", 600, 1)

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # Each app's own logger (the terminal's and the pages' INFO lines had no handler), kept
    # from the root logger's, which Daphne and Celery set up too: a line is printed once.
    "loggers": {app: {"handlers": ["console"], "level": env_str("RUNYARD_LOG_LEVEL", "INFO"), "propagate": False}
                for app in ("runs", "terminal", "dashboard")},
}

# Size caps (dashboard/body_limit.py, runs/archives.py): a dataset or code upload's
# body, what one archive may unpack to (counted while unpacking), and every other
# request body (pages, run specs), which Django also holds to in memory.
RUNYARD_MAX_UPLOAD_BYTES = env_int("RUNYARD_MAX_UPLOAD_BYTES", 2 << 30, 1)
RUNYARD_MAX_UNPACKED_BYTES = env_int("RUNYARD_MAX_UNPACKED_BYTES", 10 << 30, 1)
RUNYARD_MAX_REQUEST_BYTES = env_int("RUNYARD_MAX_REQUEST_BYTES", 1 << 20, 64 << 10)
DATA_UPLOAD_MAX_MEMORY_SIZE = RUNYARD_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 2621440  # Django's default: larger files go to a temporary file

# git imports from local paths and file:// URLs read the worker's own disk: fine for
# one team on its own machine, not for a shared deployment.
RUNYARD_GIT_ALLOW_FILE = env_bool("RUNYARD_GIT_ALLOW_FILE", not DATABASE_URL)
# Imports from the network (hf://, s3://, gs://, git over HTTP(S)) are checked when a run is created, and
# refused there when their host does not answer within RUNYARD_NETWORK_PROBE_SECONDS;
# "off" refuses them without trying (an installation with no route out).
RUNYARD_NETWORK_SOURCES = env_str("RUNYARD_NETWORK_SOURCES", "probe")
if RUNYARD_NETWORK_SOURCES not in ("probe", "off"):
    raise ImproperlyConfigured(f"RUNYARD_NETWORK_SOURCES={RUNYARD_NETWORK_SOURCES!r}: expected probe or off")
RUNYARD_NETWORK_PROBE_SECONDS = env_int("RUNYARD_NETWORK_PROBE_SECONDS", 3, 1)
# Where hf://huggingface.co/ORG/REPO is fetched from (a mirror, as huggingface_hub's HF_ENDPOINT).
RUNYARD_HF_ENDPOINT = env_str("RUNYARD_HF_ENDPOINT", "https://huggingface.co").rstrip("/")
# Key for team secrets at rest; derived from SECRET_KEY unless given.
RUNYARD_SECRETS_KEY = env_secret("RUNYARD_SECRETS_KEY")

# --- Production: HTTPS and sign-in throttling --------------------------------------
# RUNYARD_HTTPS=true: the console is served over HTTPS (usually by a reverse proxy
# that sets X-Forwarded-Proto). Browsers are told to use HTTPS only (HSTS), plain
# HTTP is redirected, and cookies are never sent in clear. `check --deploy` is then
# clean. The health check stays reachable over HTTP for load balancers.
RUNYARD_HTTPS = env_bool("RUNYARD_HTTPS", False)
if RUNYARD_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("RUNYARD_HSTS_SECONDS", 365 * 24 * 3600, 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("RUNYARD_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("RUNYARD_HSTS_PRELOAD", True)
# How many proxies in front of the console append to X-Forwarded-For: the client's
# address is that many entries from the right. 0: the connection's own address (a
# client could otherwise forge the header and dodge its lockout).
RUNYARD_PROXY_COUNT = env_int("RUNYARD_PROXY_COUNT", 0, 0)

# django-axes counts failed sign-ins per username and address, in the database (so
# every Daphne process sees the same count) and locks that pair out for a while.
# Bearer tokens the API does not know count per address (runs/throttle.py).
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: it turns a lockout into the page
AUTHENTICATION_BACKENDS = ["runs.throttle.SignInThrottle", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = "runs.throttle.failure_limit"
RUNYARD_LOGIN_FAILURE_LIMIT = env_int("RUNYARD_LOGIN_FAILURE_LIMIT", 5, 1)
RUNYARD_TOKEN_FAILURE_LIMIT = env_int("RUNYARD_TOKEN_FAILURE_LIMIT", 20, 1)
RUNYARD_LOGIN_COOLOFF_MINUTES = env_int("RUNYARD_LOGIN_COOLOFF_MINUTES", 15, 1)
AXES_COOLOFF_TIME = timedelta(minutes=RUNYARD_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "runs.throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "runs.throttle.lockout_response"
AXES_VERBOSE = False

# The Docker engine's own copy of a run's output (Runyard stores every line itself):
# at most this many files of this many MiB per container, the older ones compressed.
RUNYARD_DOCKER_LOG_MAX_SIZE_MB = env_int("RUNYARD_DOCKER_LOG_MAX_SIZE_MB", 20, 1)
RUNYARD_DOCKER_LOG_MAX_FILES = env_int("RUNYARD_DOCKER_LOG_MAX_FILES", 5, 2)
