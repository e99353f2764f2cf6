"""Tests: the real PostgreSQL and Redis when they answer (CI), SQLite and in-memory otherwise."""
import os
import socket

from .base import *  # noqa: F401,F403
from .base import VAR_DIR


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
USING_POSTGRES = "DATABASE_URL" not in os.environ and _answers(PG_HOST, 5432)
if USING_POSTGRES:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("TEST_PG_NAME", "rlhf"),
            "USER": os.environ.get("TEST_PG_USER", "postgres"),
            "HOST": PG_HOST,
            "PORT": "5432",
            "TEST": {"NAME": os.environ.get("TEST_PG_TEST_NAME", "test_rlhf")},
        }
    }
elif "DATABASE_URL" not in os.environ:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "test.sqlite3")}}

USING_REDIS = _answers("127.0.0.1", 6379)
if USING_REDIS:
    REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")  # a per-run DB keeps parallel runs apart
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
else:
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"

ARTIFACT_ROOT = VAR_DIR / "test-artifacts"
LOGGING = {"version": 1, "disable_existing_loggers": False}

_ON_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"  # also via DATABASE_URL (subprocesses)
if os.environ.get("CI") and not (_ON_POSTGRES and USING_REDIS):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "CI must test against the real PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379); "
        f"database engine: {DATABASES['default']['ENGINE']}, Redis answered: {USING_REDIS}."
    )
