"""Settings for the account provisioning service, read from the environment."""

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from e


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError as e:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from e


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return list(default)
    return [part.strip() for part in value.split(",") if part.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(set DJANGO_DEBUG=1 for a development default)."
        )
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver then serves /static/ through WhiteNoise too, as gunicorn does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_crontab",
    "syncservice",
    "taskmanagement",
]

MIDDLEWARE = [
    "config.logging.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Database: DATABASE_URL, defaulting to a SQLite file in the project folder.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite has no row locks: take the write lock when a transaction starts, so that the
    # server and the scheduler in `make run` wait for each other instead of failing.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # No startup options (PgBouncer refuses unknown ones): JIT is switched off per transaction where the
    # service's batch statements run (syncservice.db.locking.no_jit), or per role (docs/deployment.md).
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    # Each process names its connections (pg_stat_activity.application_name, PgBouncer's SHOW CLIENTS):
    # "aps <command> <pid>", or DATABASE_APPLICATION_NAME.
    _options.setdefault("application_name", (os.environ.get("DATABASE_APPLICATION_NAME") or " ".join(
        ["aps", sys.argv[1] if len(sys.argv) > 1 and sys.argv[0].endswith("manage.py")
         else Path(sys.argv[0]).name, str(os.getpid())]))[:63])
    # Behind PgBouncer in transaction pooling mode (docs/deployment.md): server-side cursors cannot outlive a
    # transaction there, so QuerySet.iterator() reads client-side instead.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool(
        "DATABASE_DISABLE_SERVER_SIDE_CURSORS", DATABASES["default"].get("DISABLE_SERVER_SIDE_CURSORS", False))

# The worker mode (run_worker) LISTENs on a direct connection: a pooled one (PgBouncer in transaction mode)
# cannot. It polls every WORKER_POLL_SECONDS besides, and runs the incremental HR sync (a call to the HR
# source) at most every WORKER_HR_SYNC_SECONDS.
DATABASE_LISTEN_URL = os.environ.get("DATABASE_LISTEN_URL") or os.environ.get("DATABASE_URL", "")
WORKER_POLL_SECONDS = env_float("WORKER_POLL_SECONDS", 10.0)
WORKER_HR_SYNC_SECONDS = env_float("WORKER_HR_SYNC_SECONDS", 300.0)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The admin speaks Chinese to operators; the API's own messages are English with machine codes.
LANGUAGE_CODE = "zh-hans"
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

# Static files (the admin's, Swagger UI's, ReDoc's) are served by WhiteNoise from STATIC_ROOT, which
# `manage.py collectstatic` fills at deployment: names carry a hash of their content, so browsers may cache
# them for good, and each has compressed copies. With debug on, WhiteNoise reads the apps' own folders and
# sees edits, so the demo needs no collectstatic.
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG
                    else "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Security headers that matter behind a TLS-terminating proxy; harmless in development.
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Load balancers probe over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # The header only consents to preloading; the domain's owner still submits it to the list.
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "syncservice.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["syncservice.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "syncservice.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["syncservice.api.throttling.ClientRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Account provisioning service API",
    "DESCRIPTION": (
        "Origin systems submit batches of people; the service provisions each person into IDaaS, "
        "WeLink and corporate email through scheduled pipeline stages. Authenticate with "
        "`Authorization: Bearer <token>` (see `python manage.py create_api_client`)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from this server's static files (drf-spectacular-sidecar), not from a CDN: the
    # pages work on a closed network.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several documents carry a request's status: one named enum for it (and a clean `check --deploy`).
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "syncservice.models.AccountCreationRequest.Status",
        "ReconciliationStatusEnum": "syncservice.models.ReconciliationRun.Status",
        "ReconciliationModeEnum": "syncservice.models.ReconciliationRun.Mode",
        "StageModeEnum": ["run", "dry_run"],
    },
}

# --- Service settings -----------------------------------------------------------------------

# Inbound rate limit per API client (a client's own throttle_rate overrides it); empty disables it.
# Counted in a database cache table so that every server process shares the count.
API_THROTTLE_RATE = os.environ.get("API_THROTTLE_RATE", "600/min")
API_THROTTLE_CACHE = "throttle"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "aps_throttle_cache"},
}

# Key for secrets stored encrypted (webhook signing secrets); derived from SECRET_KEY when unset.
FIELD_ENCRYPTION_KEY = os.environ.get("FIELD_ENCRYPTION_KEY", "")

# Intake limits.
MAX_USERS_PER_REQUEST = env_int("MAX_USERS_PER_REQUEST", 1000)
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

# The target systems a request may name, and those HR-synced persons get by default.
PROVISIONING_SYSTEMS = ["idaas", "welink", "email"]
HR_DEFAULT_SYSTEMS = env_list("HR_DEFAULT_SYSTEMS", ["idaas", "welink", "email"])
# An HR employee_status that means the person left: their accounts are disabled (never deleted).
HR_LEAVER_STATUSES = env_list("HR_LEAVER_STATUSES", ["离职"])

# Persons created through the API get person ids from this offset upwards, a range HR never uses.
API_PERSON_ID_OFFSET = env_int("API_PERSON_ID_OFFSET", 9_000_000_000_000)

# Allocated email addresses: <pinyin>@EMAIL_DOMAIN.
EMAIL_DOMAIN = os.environ.get("EMAIL_DOMAIN", "example.com")
# How many addresses of a person the mail system may refuse as someone else's before the task fails.
EMAIL_MAX_REALLOCATIONS = env_int("EMAIL_MAX_REALLOCATIONS", 5)

# Target backends: "local" (in-process, the default) or a dotted path to a backend class.
IDAAS_BACKEND = os.environ.get("IDAAS_BACKEND", "local")
WELINK_BACKEND = os.environ.get("WELINK_BACKEND", "local")
MAILBOX_BACKEND = os.environ.get("MAILBOX_BACKEND", "local")
HR_BACKEND = os.environ.get("HR_BACKEND", "local")

# Failure and latency injection for the local backends (demo and tests).
LOCAL_BACKEND_LATENCY_MS = env_int("LOCAL_BACKEND_LATENCY_MS", 0)
LOCAL_BACKEND_TRANSIENT_FAILURE_RATE = env_float("LOCAL_BACKEND_TRANSIENT_FAILURE_RATE", 0.0)
LOCAL_BACKEND_PERMANENT_FAILURE_RATE = env_float("LOCAL_BACKEND_PERMANENT_FAILURE_RATE", 0.0)
# Deterministic injection: fail the first N calls of every task, or every call for matching employee numbers.
LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = env_int("LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT", 0)
LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = os.environ.get("LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN", "")
LOCAL_BACKEND_FAILURE_SYSTEMS = env_list("LOCAL_BACKEND_FAILURE_SYSTEMS", [])
# The local WeLink answers "in progress" first and opens the account on the next poll, like the real one.
LOCAL_WELINK_ASYNC = env_bool("LOCAL_WELINK_ASYNC", False)
LOCAL_WELINK_ASYNC_POLLS = env_int("LOCAL_WELINK_ASYNC_POLLS", 1)
# Optional JSON file of persons the local HR backend serves to the incremental sync.
LOCAL_HR_PERSONS_FILE = os.environ.get("LOCAL_HR_PERSONS_FILE", "")

# --- Real target systems (HTTP backends) ---
# Chosen with IDAAS_BACKEND=scim, WELINK_BACKEND=welink, MAILBOX_BACKEND=exmail, HR_BACKEND=http; see
# docs/backends.md. Secrets come only from the environment.
TARGET_HTTP_TIMEOUT_SECONDS = env_float("TARGET_HTTP_TIMEOUT_SECONDS", 10.0)
TARGET_TOKEN_REFRESH_MARGIN_SECONDS = env_float("TARGET_TOKEN_REFRESH_MARGIN_SECONDS", 300.0)
IDAAS_SCIM_URL = os.environ.get("IDAAS_SCIM_URL", "")
IDAAS_SCIM_TOKEN = os.environ.get("IDAAS_SCIM_TOKEN", "")
# Persons per batch a SCIM worker thread takes: looked up 20 per search, created in POST /Bulk requests within
# the server's maxOperations / maxPayloadSize when /ServiceProviderConfig announces bulk.supported.
IDAAS_SCIM_BATCH_SIZE = env_int("IDAAS_SCIM_BATCH_SIZE", 50)
WELINK_API_URL = os.environ.get("WELINK_API_URL", "https://open.welink.huaweicloud.com")
WELINK_CLIENT_ID = os.environ.get("WELINK_CLIENT_ID", "")
WELINK_CLIENT_SECRET = os.environ.get("WELINK_CLIENT_SECRET", "")
# Persons per users/bulk call (and per users/status poll): WeLink takes at most 10.
WELINK_BULK_SIZE = env_int("WELINK_BULK_SIZE", 10)
if not 1 <= WELINK_BULK_SIZE <= 10:
    raise ImproperlyConfigured(f"WELINK_BULK_SIZE must be between 1 and 10 (WeLink's limit), got {WELINK_BULK_SIZE}")
# Persons per users/status call (the status API takes a list; its documented size limit is not known here).
WELINK_STATUS_BATCH_SIZE = env_int("WELINK_STATUS_BATCH_SIZE", 50)
EXMAIL_API_URL = os.environ.get("EXMAIL_API_URL", "https://api.exmail.qq.com")
EXMAIL_CORP_ID = os.environ.get("EXMAIL_CORP_ID", "")
EXMAIL_CORP_SECRET = os.environ.get("EXMAIL_CORP_SECRET", "")
EXMAIL_DEPARTMENT_ID = os.environ.get("EXMAIL_DEPARTMENT_ID", "1")
# Outbound limits, held across every worker process together (backends/pacing.py). Per endpoint, as the
# vendors state them: WeLink 40 calls/s per API per client, Tencent Exmail 500 calls/min and 15,000
# calls/hour per cgi (0 = no such limit). Per system, every endpoint together: calls per second (0 =
# unlimited; an extra cap when set), and calls in flight (0 = only the per-process *_CONCURRENCY).
WELINK_MAX_CALLS_PER_SECOND_PER_API = env_float("WELINK_MAX_CALLS_PER_SECOND_PER_API", 40.0)
MAILBOX_MAX_CALLS_PER_MINUTE_PER_CGI = env_float("MAILBOX_MAX_CALLS_PER_MINUTE_PER_CGI", 500.0)
MAILBOX_MAX_CALLS_PER_HOUR_PER_CGI = env_float("MAILBOX_MAX_CALLS_PER_HOUR_PER_CGI", 15000.0)
IDAAS_MAX_CALLS_PER_SECOND = env_float("IDAAS_MAX_CALLS_PER_SECOND", 0.0)
WELINK_MAX_CALLS_PER_SECOND = env_float("WELINK_MAX_CALLS_PER_SECOND", 0.0)
MAILBOX_MAX_CALLS_PER_SECOND = env_float("MAILBOX_MAX_CALLS_PER_SECOND", 0.0)
IDAAS_MAX_CONCURRENCY = env_int("IDAAS_MAX_CONCURRENCY", 0)
WELINK_MAX_CONCURRENCY = env_int("WELINK_MAX_CONCURRENCY", 0)
MAILBOX_MAX_CONCURRENCY = env_int("MAILBOX_MAX_CONCURRENCY", 0)
# Longest pause a rate-limit answer (Retry-After) may impose on a system, and how long a call waits for a
# shared concurrency slot before its task is handed back.
TARGET_MAX_PAUSE_SECONDS = env_float("TARGET_MAX_PAUSE_SECONDS", 300.0)
TARGET_SLOT_WAIT_SECONDS = env_float("TARGET_SLOT_WAIT_SECONDS", 30.0)
# Slots held across transactions (a target's concurrency slots, the HR sync's singleton) are rows with a lease
# of this length, renewed every third of it while held: a holder killed with kill -9 blocks its slot this long.
LEASE_SECONDS = env_float("LEASE_SECONDS", 30.0)
HR_API_URL = os.environ.get("HR_API_URL", "")
HR_API_TOKEN = os.environ.get("HR_API_TOKEN", "")
# Extra tries of one HR page on a timeout, 5xx or 429 before the sync run fails.
HR_HTTP_RETRIES = env_int("HR_HTTP_RETRIES", 2)

# --- Completion notifications ---
# A request's final status document goes to its callbackUrl (signed with the client's webhook secret) and,
# for clients with a notify address, an email goes to operators; both leave from an outbox table that the
# process stage drains. Callback URLs must be https and resolve to public addresses, except for hosts on
# CALLBACK_ALLOWED_HOSTS (comma-separated host names; these may also use http and private addresses).
CALLBACK_ALLOWED_HOSTS = env_list("CALLBACK_ALLOWED_HOSTS", [])
CALLBACK_ALLOW_PRIVATE_NETWORKS = env_bool("CALLBACK_ALLOW_PRIVATE_NETWORKS", False)
CALLBACK_TIMEOUT_SECONDS = env_float("CALLBACK_TIMEOUT_SECONDS", 10.0)
# https callbacks are verified against these CAs (a PEM file) instead of the public ones (certifi's bundle):
# an internal CA for internal receivers. To trust both, put both in the file.
CALLBACK_CA_BUNDLE = os.environ.get("CALLBACK_CA_BUNDLE", "")
if CALLBACK_CA_BUNDLE and not (os.path.isfile(CALLBACK_CA_BUNDLE) and os.access(CALLBACK_CA_BUNDLE, os.R_OK)):
    raise ImproperlyConfigured(f"CALLBACK_CA_BUNDLE={CALLBACK_CA_BUNDLE!r} is not a readable file")
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 8)
NOTIFICATION_RETRY_BASE_SECONDS = env_float("NOTIFICATION_RETRY_BASE_SECONDS", 30.0)
NOTIFICATION_RETRY_MAX_SECONDS = env_float("NOTIFICATION_RETRY_MAX_SECONDS", 3600.0)
# A claimed notification whose sender died is sent again after this; it must outlast one batch of sends.
NOTIFICATION_LEASE_SECONDS = env_int("NOTIFICATION_LEASE_SECONDS", 300)
NOTIFICATION_BATCH_SIZE = env_int("NOTIFICATION_BATCH_SIZE", 20)
NOTIFICATION_CONCURRENCY = env_int("NOTIFICATION_CONCURRENCY", 4)
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
# An SMTP server that never answers must not hold the process stage.
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", f"account-provisioning@{EMAIL_DOMAIN}")

# Pipeline behaviour.
# Items per transaction of the sync and task stages (each batch costs a constant number of statements).
STAGE_BATCH_SIZE = env_int("STAGE_BATCH_SIZE", 2000)
TASK_MAX_ATTEMPTS = env_int("TASK_MAX_ATTEMPTS", 5)
TASK_RETRY_BASE_SECONDS = env_float("TASK_RETRY_BASE_SECONDS", 30.0)
TASK_RETRY_MAX_SECONDS = env_float("TASK_RETRY_MAX_SECONDS", 3600.0)
TASK_LEASE_SECONDS = env_int("TASK_LEASE_SECONDS", 300)
# Rate-limit answers do not use up attempts, up to this many per task (then they count like any failure).
TASK_MAX_RATE_LIMIT_DEFERRALS = env_int("TASK_MAX_RATE_LIMIT_DEFERRALS", 100)
TASK_ASYNC_POLL_SECONDS = env_float("TASK_ASYNC_POLL_SECONDS", 30.0)
TASK_ASYNC_TIMEOUT_SECONDS = env_int("TASK_ASYNC_TIMEOUT_SECONDS", 6 * 3600)
PROCESS_STAGE_MAX_SECONDS = env_int("PROCESS_STAGE_MAX_SECONDS", 240)
# Tasks a worker claims ahead of its threads, per thread: larger claims, fewer round trips. Unstarted
# claimed tasks are handed back on SIGTERM; a killed worker's come back when their lease expires. The queue
# also never holds more than PROCESS_QUEUE_SECONDS of calls (judged by their recent duration, waits for the
# target's rate limit included), nor more than a quarter of TASK_LEASE_SECONDS: fast targets get big
# claims, slow ones short queues that keep priorities fresh and workers evenly loaded.
PROCESS_PREFETCH = env_int("PROCESS_PREFETCH", 32)
PROCESS_QUEUE_SECONDS = env_float("PROCESS_QUEUE_SECONDS", 0.25)
# Concurrent calls per target system within one worker process.
BACKEND_CONCURRENCY = {
    "idaas": env_int("IDAAS_CONCURRENCY", 8),
    "welink": env_int("WELINK_CONCURRENCY", 8),
    "email": env_int("MAILBOX_CONCURRENCY", 8),
}

# Scheduling: the three stages every STAGE_INTERVAL_MINUTES through django-crontab.
STAGE_INTERVAL_MINUTES = env_int("STAGE_INTERVAL_MINUTES", 5)
# Finished requests are kept this long, then deleted by purge_account_requests (daily at PURGE_SCHEDULE).
REQUEST_RETENTION_DAYS = env_int("REQUEST_RETENTION_DAYS", 30)
PURGE_SCHEDULE = os.environ.get("PURGE_SCHEDULE", "30 3 * * *")
# Reconciliation (reconcile_accounts), daily at RECONCILE_SCHEDULE: the targets read RECONCILE_PAGE_SIZE
# accounts at a time. A run repairs at most RECONCILE_MAX_REPAIRS accounts per system (a number, or a
# percentage of the system's accounts) unless forced. An account at a target is in our key space, and an
# orphan when we do not know it, when its employee number matches RECONCILE_EMPLOYEE_NUMBER_PATTERN or its
# address is at EMAIL_DOMAIN.
RECONCILE_SCHEDULE = os.environ.get("RECONCILE_SCHEDULE", "0 2 * * *")
RECONCILE_PAGE_SIZE = env_int("RECONCILE_PAGE_SIZE", 500)
RECONCILE_MAX_REPAIRS = os.environ.get("RECONCILE_MAX_REPAIRS", "5%")
RECONCILE_REPAIR = env_bool("RECONCILE_REPAIR", False)  # whether the scheduled run repairs, or only reports
RECONCILE_EMPLOYEE_NUMBER_PATTERN = os.environ.get("RECONCILE_EMPLOYEE_NUMBER_PATTERN",
                                                   r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SCHEDULER_INTERVAL_SECONDS = env_int("SCHEDULER_INTERVAL_SECONDS", STAGE_INTERVAL_MINUTES * 60)
CRONJOBS = [
    (f"*/{STAGE_INTERVAL_MINUTES} * * * *", "taskmanagement.cron.sync_hr_persons"),
    (f"*/{STAGE_INTERVAL_MINUTES} * * * *", "taskmanagement.cron.create_account_tasks"),
    (f"*/{STAGE_INTERVAL_MINUTES} * * * *", "taskmanagement.cron.process_account_creation_tasks"),
    (PURGE_SCHEDULE, "taskmanagement.cron.purge_account_requests"),
    (RECONCILE_SCHEDULE, "taskmanagement.cron.reconcile_accounts"),
]
# Cron runs with an empty environment: CRONTAB_COMMAND_PREFIX can load one, e.g. "set -a; . /etc/aps.env;".
CRONTAB_COMMAND_PREFIX = os.environ.get("CRONTAB_COMMAND_PREFIX", "")
CRONTAB_DJANGO_MANAGE_PATH = str(BASE_DIR / "manage.py")
CRONTAB_EXECUTABLE = os.environ.get("CRONTAB_EXECUTABLE", "/usr/bin/crontab")
CRONTAB_LOCK_JOBS = True

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# "json": one object per line (time, level, logger, request_id, message); "plain" for reading in a terminal.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "config.logging.RedactingFilter"}},
    "formatters": {
        "json": {"()": "config.logging.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if LOG_FORMAT == "plain" else "json",
            "filters": ["redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
    },
}

# /metrics (Prometheus) answers only when enabled, and only to `Authorization: Bearer <METRICS_TOKEN>`;
# disabled, it answers 404 like any unknown address. See docs/metrics.md.
METRICS_ENABLED = env_bool("METRICS_ENABLED", False)
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_ENABLED and not METRICS_TOKEN.strip():
    raise ImproperlyConfigured("METRICS_TOKEN must be set when METRICS_ENABLED is on")

# /readyz answers 503 when a pipeline stage has not succeeded for this long (a stage that never ran is
# not overdue: a fresh installation is ready before cron's first run).
READYZ_STAGE_OVERDUE_SECONDS = env_int("READYZ_STAGE_OVERDUE_SECONDS", 3 * STAGE_INTERVAL_MINUTES * 60)
