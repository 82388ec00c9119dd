"""Settings for esaroutes: one file, everything from the environment (see the README's configuration table).

With no environment at all this is the embedded default: SQLite and a filesystem Celery broker under ./var,
no service to install. DATABASE_URL and REDIS_URL switch to PostgreSQL and Redis for production and scale-out.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from esaroutes import env

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env.env_path("ESAROUTES_DATA_DIR", BASE_DIR / "var")
LOG_DIR = DATA_DIR / "log"
MAIL_LOG_DIR = LOG_DIR / "mail_logs"
BROKER_DIR = DATA_DIR / "broker"
JOURNAL_DIR = DATA_DIR / "journal"  # deliveries not yet recorded, per worker process (delivery.spool.journal)
for _d in (
    DATA_DIR,
    LOG_DIR,
    MAIL_LOG_DIR,
    DATA_DIR / "static",
    BROKER_DIR / "queue",
    BROKER_DIR / "processed",
    BROKER_DIR / "control",
):
    _d.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data directory (mode 0600)."""
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        if len(key) < 50 or len(set(key)) < 5:
            raise ImproperlyConfigured("SECRET_KEY: use at least 50 random characters")
        return key
    path = DATA_DIR / "secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.env_bool("DEBUG", False)
ALLOWED_HOSTS = env.env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.env_list("ESAROUTES_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "esaroutes",
    "routes",
    "delivery",
    "delivery.webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "esaroutes.middleware.security_headers",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "esaroutes.urls"
WSGI_APPLICATION = "esaroutes.wsgi.application"

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
                "esaroutes.permissions.capabilities",
            ],
            # The monitor's tag library is not in an app's templatetags folder: named here for {% load %}.
            "libraries": {"maillog_tags": "delivery.monitor.templatetags.maillog_tags"},
        },
    },
]

# --- Database -----------------------------------------------------------------------------------------------
DATABASE_URL = env.env_url("DATABASE_URL", ("postgres", "postgresql", "sqlite"))
if DATABASE_URL:
    # Persistent connections: each thread that works with the database (the listener's, the runner's executor,
    # the recorder, a Celery task's) keeps its own for ESAROUTES_DB_CONN_MAX_AGE seconds, checked before reuse
    # after a request or task. With 0, every `close_old_connections()` (each task, each DCID or slot step of the
    # runner) closed it, and the next query started a new server backend: a fork and a warm-up for a query or two.
    DATABASES: dict[str, dict[str, Any]] = {
        "default": dict(
            dj_database_url.parse(
                DATABASE_URL,
                conn_max_age=env.env_int("ESAROUTES_DB_CONN_MAX_AGE", 300, minimum=0),
                conn_health_checks=True,
            )
        )
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # psycopg prepares a statement run with `prepare=True` (or, past this many runs, any statement) on
        # server-side binding cursors only: those of esaroutes.bulk, whose texts do not change with the number of
        # rows (Django's own cursors bind on the client side and are never prepared). Django leaves it None,
        # which disables preparing altogether, for connection poolers older than PgBouncer 1.21.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "esaroutes.sqlite3",
            # Web, listener and workers are separate processes sharing one file: WAL lets readers run beside the
            # writer, IMMEDIATE takes the write lock at BEGIN (no upgrade deadlocks) and the timeout makes a
            # writer wait for another instead of failing with "database is locked". synchronous=FULL: each commit
            # (the 250 to a message) is on disk before it returns; NORMAL could lose the last ones to a power cut.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            },
            # A named file, so threads of the test run (listener, live server, embedded worker) see the data.
            "TEST": {"NAME": str(DATA_DIR / "test-esaroutes.sqlite3")},
        }
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("transaction_mode", "IMMEDIATE")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and Celery -----------------------------------------------------------------------------------------
REDIS_URL = env.env_url("REDIS_URL", ("redis", "rediss", "unix"))

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT = "esaroutes.broker:Transport"  # kombu's, surviving a Redis restart (see there)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        # A task not acknowledged in this time is handed to another worker. Our tasks are short and idempotent
        # (the lease in the database decides who works), so a short window only costs a harmless re-check.
        "visibility_timeout": env.env_int("ESAROUTES_VISIBILITY_TIMEOUT", 300, minimum=30),
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    # The embedded default: kombu's filesystem transport needs no server. The database is the truth; the broker
    # is only a doorbell, and the beat sweep rings again for anything the broker lost.
    CELERY_BROKER_URL = "filesystem://"
    # A transport without its own event loop (this one) makes a prefork pool share one task queue whose read
    # lock an idle pool process holds while it waits: a pool process killed then (OOM killer, kill -9) leaves
    # the lock taken and every other pool process waits forever. Threads have no such lock; delivery is mostly
    # waiting on sockets and the database, and one process is what SQLite's single writer wants anyway.
    CELERY_WORKER_POOL = "threads"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes a task's database connection after every task unless this is set (then after every
# 2N). delivery.tasks closes it the way Django closes a request's instead (`close_old_connections`: older than
# CONN_MAX_AGE, unusable after an error, or failing its health check), so a worker keeps one between tasks.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_TIME_LIMIT = env.env_int("ESAROUTES_TASK_TIME_LIMIT", 900, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
ESAROUTES_SWEEP_INTERVAL = env.env_float("ESAROUTES_SWEEP_INTERVAL", 5.0, minimum=0.5)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "sweep-queue": {"task": "delivery.tasks.sweep", "schedule": timedelta(seconds=ESAROUTES_SWEEP_INTERVAL)},
    "worker-heartbeat": {"task": "esaroutes.tasks.heartbeat", "schedule": timedelta(seconds=15)},
    "send-webhooks": {
        "task": "delivery.tasks.send_webhooks",
        "schedule": timedelta(seconds=env.env_float("ESAROUTES_WEBHOOK_INTERVAL", 5.0, minimum=0.5)),
    },
}

# --- The mail relay -------------------------------------------------------------------------------------------
ESAROUTES_HOSTNAME = env.env_str("ESAROUTES_HOSTNAME", socket.gethostname())
ESAROUTES_WEB_LISTEN = env.env_listen("ESAROUTES_WEB_LISTEN", "127.0.0.1:8000")
# The web server (manage.py web): gunicorn worker processes, each reading requests in Hypercorn's event loop and
# running Django in a thread only once a request has fully arrived (esaroutes/webserver.py); a connection whose
# request head is not complete this many seconds after it opened (or after its last response) is closed.
ESAROUTES_WEB_WORKERS = env.env_int("ESAROUTES_WEB_WORKERS", 2, minimum=1, maximum=64)
ESAROUTES_WEB_HEADER_TIMEOUT = env.env_int("ESAROUTES_WEB_HEADER_TIMEOUT", 30, minimum=1, maximum=3600)
ESAROUTES_SMTP_LISTEN = env.env_listen("ESAROUTES_SMTP_LISTEN", "127.0.0.1:2525")
# The event loop of the SMTP listener and of the worker's delivery runner (esaroutes/eventloop.py).
ESAROUTES_EVENT_LOOP = env.env_str("ESAROUTES_EVENT_LOOP", "uvloop").lower()
if ESAROUTES_EVENT_LOOP not in ("uvloop", "asyncio"):
    raise ImproperlyConfigured(f"ESAROUTES_EVENT_LOOP: {ESAROUTES_EVENT_LOOP!r} is neither 'uvloop' nor 'asyncio'")
# The inbound SMTP listener (manage.py smtpd): ESA-like limits; see the README's "SMTP listener" section.
ESAROUTES_SMTP_INTERFACE = env.env_str("ESAROUTES_SMTP_INTERFACE", "Data 1")
ESAROUTES_SMTP_MAX_MESSAGE_SIZE = env.env_int("ESAROUTES_SMTP_MAX_MESSAGE_SIZE", 10 * 1024 * 1024, minimum=1024)
ESAROUTES_SMTP_MAX_RECIPIENTS = env.env_int("ESAROUTES_SMTP_MAX_RECIPIENTS", 1000, minimum=1)
ESAROUTES_SMTP_MAX_CONNECTIONS = env.env_int("ESAROUTES_SMTP_MAX_CONNECTIONS", 300, minimum=1)
ESAROUTES_SMTP_MAX_CONNECTIONS_PER_CLIENT = env.env_int("ESAROUTES_SMTP_MAX_CONNECTIONS_PER_CLIENT", 50, minimum=1)
ESAROUTES_SMTP_COMMAND_TIMEOUT = env.env_float("ESAROUTES_SMTP_COMMAND_TIMEOUT", 300.0, minimum=0.1)
ESAROUTES_SMTP_DATA_TIMEOUT = env.env_float("ESAROUTES_SMTP_DATA_TIMEOUT", 300.0, minimum=0.1)
ESAROUTES_SMTP_MAX_ERRORS = env.env_int("ESAROUTES_SMTP_MAX_ERRORS", 20, minimum=1)
# Listener processes sharing the port (SO_REUSEPORT): both cores answer SMTP, not one interpreter.
ESAROUTES_SMTP_PROCESSES = env.env_int("ESAROUTES_SMTP_PROCESSES", os.cpu_count() or 1, minimum=1, maximum=64)
ESAROUTES_SMTP_AUTH_WITHOUT_TLS = env.env_bool("ESAROUTES_SMTP_AUTH_WITHOUT_TLS", False)
# SMTP AUTH failures from one client address, or for one SMTP user, before AUTH is refused (421) for the lockout
# seconds after the last failure; counted in the cache across listener processes (esaroutes/throttle.py).
ESAROUTES_SMTP_AUTH_MAX_FAILURES = env.env_int("ESAROUTES_SMTP_AUTH_MAX_FAILURES", 5, minimum=1)
ESAROUTES_SMTP_AUTH_LOCKOUT = env.env_int("ESAROUTES_SMTP_AUTH_LOCKOUT", 900, minimum=10)
ESAROUTES_SMTP_REVERSE_DNS = env.env_bool("ESAROUTES_SMTP_REVERSE_DNS", False)
ESAROUTES_SMTP_TLS_CERT = env.env_str("ESAROUTES_SMTP_TLS_CERT", "")
ESAROUTES_SMTP_TLS_KEY = env.env_str("ESAROUTES_SMTP_TLS_KEY", "")
ESAROUTES_SMTP_DB_THREADS = env.env_int("ESAROUTES_SMTP_DB_THREADS", 8, minimum=1, maximum=64)
ESAROUTES_SMTP_ACCESS_REFRESH = env.env_float("ESAROUTES_SMTP_ACCESS_REFRESH", 1.0, minimum=0.05)
ESAROUTES_MAILLOG_MAX_BYTES = env.env_int("ESAROUTES_MAILLOG_MAX_BYTES", 100 * 1024 * 1024, minimum=1024)
ESAROUTES_MAILLOG_MAX_AGE = env.env_float("ESAROUTES_MAILLOG_MAX_AGE", 86400.0, minimum=1.0)
ESAROUTES_MAILLOG_KEEP = env.env_int("ESAROUTES_MAILLOG_KEEP", 10, minimum=1)

# --- delivery ---------------------------------------------------------------------------------------------------
# How long a worker owns a claimed message; renewed while it works, so only a dead worker's lease runs out.
ESAROUTES_LEASE_SECONDS = env.env_float("ESAROUTES_LEASE_SECONDS", 60.0, minimum=1.0)
ESAROUTES_DELIVERY_BATCH = env.env_int("ESAROUTES_DELIVERY_BATCH", 100, minimum=1, maximum=10_000)
# Messages one worker process holds in flight (handed to its event loop, not yet recorded) before a delivery task
# waits; batches stalled on a slow host count against twice this, so they never hold the room of moving mail.
ESAROUTES_DELIVERY_MAX_IN_FLIGHT = env.env_int("ESAROUTES_DELIVERY_MAX_IN_FLIGHT", 1000, minimum=1, maximum=1_000_000)
# Messages per connection: the destination controls' (the Default entry's replaces the old
# ESAROUTES_DELIVERY_MAX_MESSAGES_PER_CONNECTION, whose value its data migration took over).
ESAROUTES_DELIVERY_IDLE = env.env_float("ESAROUTES_DELIVERY_IDLE", 5.0, minimum=0.0)
ESAROUTES_DELIVERY_EHLO = env.env_str("ESAROUTES_DELIVERY_EHLO", ESAROUTES_HOSTNAME)
ESAROUTES_DELIVERY_SOURCE_ADDRESS = env.env_str("ESAROUTES_DELIVERY_SOURCE_ADDRESS", "")
ESAROUTES_DELIVERY_CA_FILE = env.env_str("ESAROUTES_DELIVERY_CA_FILE", "")
# Every outgoing connection (delivery, MX targets, the route tester's probe, webhooks) goes only to these networks.
ESAROUTES_DELIVERY_ALLOWED_NETWORKS = tuple(
    env.env_networks("ESAROUTES_DELIVERY_ALLOWED_NETWORKS", ["0.0.0.0/0", "::/0"])
)
ESAROUTES_DELIVERY_CONNECT_TIMEOUT = env.env_float("ESAROUTES_DELIVERY_CONNECT_TIMEOUT", 30.0, minimum=0.1)
ESAROUTES_DELIVERY_COMMAND_TIMEOUT = env.env_float("ESAROUTES_DELIVERY_COMMAND_TIMEOUT", 300.0, minimum=0.1)
ESAROUTES_DELIVERY_DATA_TIMEOUT = env.env_float("ESAROUTES_DELIVERY_DATA_TIMEOUT", 600.0, minimum=0.1)
ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT = env.env_float("ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT", 1800.0, minimum=0.1)
# The port of hosts found by MX lookup (USEDNS and domains without a route): 25, except to test on loopback.
ESAROUTES_DELIVERY_MX_PORT = env.env_int("ESAROUTES_DELIVERY_MX_PORT", 25, minimum=1, maximum=65535)
# The fallback relay of mail delivered by MX records (USEDNS routes without a fallback of their own, domains with no
# route): HOST[:PORT], tried when every MX host failed a recipient, before it waits for its retry. Unset: none.
ESAROUTES_DELIVERY_FALLBACK_RELAY = env.env_relay("ESAROUTES_DELIVERY_FALLBACK_RELAY")
ESAROUTES_HOST_DOWN_INITIAL = env.env_float("ESAROUTES_HOST_DOWN_INITIAL", 60.0, minimum=0.0)
ESAROUTES_HOST_DOWN_MAX = env.env_float("ESAROUTES_HOST_DOWN_MAX", 3600.0, minimum=0.0)
# Routes: outgoing SMTP AUTH passwords are encrypted at rest with this Fernet key (urlsafe base64 of 32 bytes,
# `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`); unset, a key is
# derived from SECRET_KEY, so changing SECRET_KEY then makes stored passwords unreadable (re-enter them).
ESAROUTES_ENCRYPTION_KEY = env.env_str("ESAROUTES_ENCRYPTION_KEY", "")
# Seconds a worker trusts its cached route table before checking the table version again.
ESAROUTES_ROUTE_REFRESH = env.env_float("ESAROUTES_ROUTE_REFRESH", 2.0, minimum=0.0)
# Delivery DNS (MX lookups for USEDNS routes and unrouted domains): servers as IP, IP:PORT or [IPv6]:PORT, none =
# the system resolver (/etc/resolv.conf); the timeout bounds one domain's lookup, all its queries together.
ESAROUTES_DNS_SERVERS = env.env_list("ESAROUTES_DNS_SERVERS", [])
for _server in ESAROUTES_DNS_SERVERS:
    _with_port = _server.startswith("[") or _server.count(":") == 1  # a bare IPv6 address has several colons
    try:
        ipaddress.ip_address(env.parse_listen(_server)[0] if _with_port else _server)
    except ValueError:
        raise ImproperlyConfigured(
            f"ESAROUTES_DNS_SERVERS: {_server!r} is not an IP address, IP:PORT or [IPv6]:PORT"
        ) from None
ESAROUTES_DNS_TIMEOUT = env.env_float("ESAROUTES_DNS_TIMEOUT", 10.0, minimum=0.1)

# Operator views: /metrics answers clients in these networks, or any client presenting this bearer token.
ESAROUTES_METRICS_NETWORKS = env.env_networks("ESAROUTES_METRICS_NETWORKS", ["127.0.0.0/8", "::1/128"])
ESAROUTES_METRICS_TOKEN = env.env_str("ESAROUTES_METRICS_TOKEN", "")
# Rows per response of the mail log page, and how far back a search without a "from" time reaches.
ESAROUTES_LOG_PAGE_ROWS = env.env_int("ESAROUTES_LOG_PAGE_ROWS", 500, minimum=10, maximum=5000)
ESAROUTES_LOG_SEARCH_HOURS = env.env_int("ESAROUTES_LOG_SEARCH_HOURS", 24, minimum=1)

# --- The REST API (/api/v1/, esaroutes/api/) -------------------------------------------------------------------
# Requests per token (per user for the session, per address before authentication) and the period, DRF's
# "N/second|minute|hour|day"; the largest request body an endpoint reads unless it says otherwise (injection
# allows the SMTP message size); rows per page of a list, by default and at most.
ESAROUTES_API_RATE = env.env_str("ESAROUTES_API_RATE", "1200/minute")
if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", ESAROUTES_API_RATE):
    raise ImproperlyConfigured(f"ESAROUTES_API_RATE: {ESAROUTES_API_RATE!r} is not N/second, N/minute, N/hour or N/day")
ESAROUTES_API_MAX_BODY = env.env_int("ESAROUTES_API_MAX_BODY", 1024 * 1024, minimum=1024)
ESAROUTES_API_PAGE_SIZE = env.env_int("ESAROUTES_API_PAGE_SIZE", 100, minimum=1, maximum=1000)
ESAROUTES_API_MAX_PAGE_SIZE = env.env_int("ESAROUTES_API_MAX_PAGE_SIZE", 1000, minimum=1, maximum=10_000)
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "esaroutes.api.auth.BearerTokenAuthentication",
        "esaroutes.api.auth.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["esaroutes.api.permissions.HasCapability"],
    "DEFAULT_THROTTLE_CLASSES": ["esaroutes.api.throttling.TokenRateThrottle"],
    # JSON only: no browsable API, never AdminRenderer (CVE-2026-73229).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "esaroutes.api.pagination.KeysetPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "esaroutes.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "esaroutes API",
    "DESCRIPTION": "Routes, access tables, the queue, tracking and the logs of esaroutes (the README's API section).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["esaroutes.api.permissions.AnyRole"],
    "SERVE_AUTHENTICATION": [
        "esaroutes.api.auth.BearerTokenAuthentication",
        "esaroutes.api.auth.SessionAuthentication",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {  # two "tls" choice sets: a route's and a destination control's
        "RouteTlsEnum": "routes.api.views.TLS_CHOICES",
        "DestinationTlsEnum": "routes.models.DestinationControl.TLS",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "esaroutes.api.schema.add_problem_responses",
    ],
}

# --- Auth, sessions, security ---------------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

ESAROUTES_LOGIN_MAX_FAILURES = env.env_int("ESAROUTES_LOGIN_MAX_FAILURES", 5, minimum=1)
ESAROUTES_LOGIN_LOCKOUT = env.env_int("ESAROUTES_LOGIN_LOCKOUT", 900, minimum=10)
# Every web login (the site's, the admin's, anything calling authenticate()) goes through the login throttle.
AUTHENTICATION_BACKENDS = ["esaroutes.login.ThrottledModelBackend"]

ESAROUTES_HTTPS = env.env_bool("ESAROUTES_HTTPS", False)
SESSION_COOKIE_HTTPONLY = True
# No script reads the CSRF cookie: htmx sends the token from the page (base.html's hx-headers), forms from theirs.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.env_int("ESAROUTES_SESSION_AGE", 8 * 3600, minimum=300)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if ESAROUTES_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Internationalisation, static files -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# --- Logging: the application log (tracebacks), never the mail log ---------------------------------------------
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "file": {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": str(LOG_DIR / "esaroutes.log"),
            "formatter": "plain",
        },
    },
    "root": {"handlers": ["console", "file"], "level": env.env_str("ESAROUTES_LOG_LEVEL", "INFO").upper()},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "mail.log": {"level": "WARNING"},  # aiosmtpd logs every SMTP command at INFO; ours is the ESA mail log
    },
}
