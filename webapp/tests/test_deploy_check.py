"""Production settings, in fresh subprocesses: Django's deployment checklist passes with no warning, and
the app refuses to start (manage.py and the WSGI entry point gunicorn loads) with a missing, empty,
default or short secret key."""
import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = pytest.mark.slow
ROOT = str(settings.BASE_DIR)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings.production", PYTHONPATH=ROOT, **extra)
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_production_settings():
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                  _env(DJANGO_SECRET_KEY=secrets.token_urlsafe(64)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("key", [None, "", "local-development-only-not-secret", "test-secret-key-not-for-production",
                                 "django-insecure-" + "x" * 50, "short-but-random-3f9a"])
def test_production_refuses_to_start_with_a_weak_secret_key(key):
    env = _env() if key is None else _env(DJANGO_SECRET_KEY=key)
    for args in (["manage.py", "check"], ["-c", "import webapp.wsgi"]):
        result = _run(args, env)
        assert result.returncode != 0, (args, key)
        assert "DJANGO_SECRET_KEY must be set" in result.stderr, result.stderr[-2000:]


def test_production_defaults_are_safe():
    code = ("from django.conf import settings as s; "
            "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.X_FRAME_OPTIONS, "
            "s.SESSION_COOKIE_HTTPONLY, s.SECURE_HSTS_SECONDS >= 31536000, s.ALLOWED_HOSTS)")
    result = _run(["-c", "import django; django.setup(); " + code], _env(DJANGO_SECRET_KEY=secrets.token_urlsafe(64)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False True True True DENY True True ['localhost', '127.0.0.1']"
