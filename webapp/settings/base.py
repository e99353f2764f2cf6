"""Settings shared by every environment. Every deployment difference is an environment variable."""
import os
from pathlib import Path

import dj_database_url
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("RLHF_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Safe defaults: production unless told otherwise (local/test settings override these).
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

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
    "annotation",
    "training",
    "lab",
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
    "django_htmx.middleware.HtmxMiddleware",
    "webapp.middleware.ContentSecurityPolicyMiddleware",
    "webapp.middleware.UploadSizeLimitMiddleware",  # 413 past MAX_UPLOAD_BYTES, before the body is read
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # No JIT: it compiles any plan whose *estimated* cost is high, and the lease query's branch for rounds
    # beyond the first is estimated as a scan it never runs (a one-time filter skips it): with JIT on, every
    # fetch paid ~0.4 s of compilation at 1M prompts (docs/scaling.md). Short OLTP statements gain nothing.
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Uploads stream to disk past this size; one import file may be large.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Any request body (an upload included) past this is refused with 413 before it is read; uploads are then
# read line by line (annotation/limits.py), never whole. JSON nested deeper than JSON_MAX_DEPTH is a 400.
MAX_UPLOAD_BYTES = int(os.environ.get("RLHF_MAX_UPLOAD_BYTES", str(64 * 1024 * 1024)))
JSON_MAX_DEPTH = int(os.environ.get("RLHF_JSON_MAX_DEPTH", "64"))

# Security headers (production.py tightens transport security further).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept default for API clients.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "webapp.security.ThrottledBasicAuthentication",  # Basic auth under the login throttle
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [  # DRF's defaults, with a JSON parser that refuses deep nesting with 400
        "webapp.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF Studio API",
    "DESCRIPTION": "Preference collection and RLHF training runs.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {  # same field names, different choice sets: name each enum explicitly
        "RunKindEnum": "training.models.TrainingRun.Kind",
        "ArtifactKindEnum": "training.models.ModelArtifact.Kind",
        "RunStatusEnum": "training.models.TrainingRun.Status",
        "AssignmentStatusEnum": "annotation.models.Assignment.Status",
    },
}

# Cache: login-throttle counters. Shared Redis when REDIS_URL is set (production: every gunicorn worker
# sees the same counters); a per-process memory cache otherwise (embedded default, tests).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["REDIS_URL"]}
    if os.environ.get("REDIS_URL")
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
LOGIN_THROTTLE_FAILURES = int(os.environ.get("RLHF_LOGIN_THROTTLE_FAILURES", "5"))  # per username and client
LOGIN_THROTTLE_CLIENT_FAILURES = int(os.environ.get("RLHF_LOGIN_THROTTLE_CLIENT_FAILURES", "30"))  # per client
LOGIN_THROTTLE_WINDOW_S = int(os.environ.get("RLHF_LOGIN_THROTTLE_WINDOW_S", str(15 * 60)))
# Past this many failures for one username from anywhere, a short exponential back-off (1 s, 2 s, 4 s … at
# most LOGIN_THROTTLE_BACKOFF_MAX_S) per further failure; browsers that logged in before are exempt.
LOGIN_THROTTLE_USER_FAILURES = int(os.environ.get("RLHF_LOGIN_THROTTLE_USER_FAILURES", "10"))
LOGIN_THROTTLE_BACKOFF_MAX_S = int(os.environ.get("RLHF_LOGIN_THROTTLE_BACKOFF_MAX_S", "30"))
LOGIN_KNOWN_DEVICE_COOKIE = "rlhf_known_device"  # signed; set on a successful log-in (webapp/security.py)
LOGIN_KNOWN_DEVICE_MAX_AGE_S = int(os.environ.get("RLHF_LOGIN_KNOWN_DEVICE_MAX_AGE_S", str(180 * 24 * 3600)))

# Celery: the database is the source of truth; messages carry ids only.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 6 * 3600}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = (Queue("default"), Queue("gpu"))
CELERY_TASK_ROUTES = {
    "training.tasks.execute_run": {"queue": "gpu"},
    "annotation.tasks.generate_arena": {"queue": "gpu"},  # arena responses from two checkpoints (lab/tasks.py)
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT", 48 * 3600))
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 600
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE = {
    "reconcile-stale-runs": {"task": "training.tasks.reconcile_runs", "schedule": 60.0},
    "expire-leases": {"task": "annotation.tasks.expire_leases", "schedule": 60.0},
}

# Where trained models, checkpoints and datasets live; shared between workers on several machines.
ARTIFACT_ROOT = Path(os.environ.get("RLHF_ARTIFACT_ROOT", VAR_DIR / "artifacts"))
RUN_HEARTBEAT_STALE_SECONDS = int(os.environ.get("RLHF_RUN_HEARTBEAT_STALE_SECONDS", "300"))
RUN_MAX_ATTEMPTS = int(os.environ.get("RLHF_RUN_MAX_ATTEMPTS", "3"))


def _json_env(name: str, default):
    """A JSON-valued environment variable; a malformed one stops the start with the variable named."""
    import json

    from django.core.exceptions import ImproperlyConfigured

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {error}") from error


# Security of what users may name (docs/guarantees.md, "Security"):
# - RLHF_HOOKS: the operator's code hooks, {"utility"|"reward_fn"|"task_check": {name: "module:function"}},
#   added to the built-ins of annotation.hooks; users pick hooks by name only.
# - RLHF_MODEL_ROOTS: directories (comma-separated) under which users may type a model directory; everything
#   else is chosen as an artifact of their own project. Empty: users type no paths at all.
# - RLHF_ALLOW_MODEL_HUB: let base models be hub ids and let workers download them (off: HF libraries offline).
RLHF_HOOKS = _json_env("RLHF_HOOKS", {})
RLHF_MODEL_ROOTS = env_list("RLHF_MODEL_ROOTS")
RLHF_ALLOW_MODEL_HUB = env_bool("RLHF_ALLOW_MODEL_HUB", False)

# Annotation limits (untrusted input is bounded).
ANNOTATION_LEASE_MINUTES = int(os.environ.get("RLHF_LEASE_MINUTES", "30"))
IMPORT_MAX_LINE_BYTES = int(os.environ.get("RLHF_IMPORT_MAX_LINE_BYTES", str(1024 * 1024)))
IMPORT_MAX_RESPONSES = 16

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
