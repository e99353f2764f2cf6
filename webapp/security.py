"""Login throttling: failed log-ins are counted in the cache, per (username, client) and per client.

Django checks passwords but does not limit how often one may guess. Past ``LOGIN_THROTTLE_FAILURES``
failures for one username from one client address (or ``LOGIN_THROTTLE_CLIENT_FAILURES`` from one
address in all) within ``LOGIN_THROTTLE_WINDOW_S`` seconds, further attempts are refused with HTTP 429
before the password is even checked, until the window passes. A successful log-in clears the
username's counter. Both the login page and HTTP Basic authentication of the API go through here.

The counters live in Django's cache: the Redis cache in production (``REDIS_URL``), so that every
gunicorn worker shares them; a per-process local-memory cache in development and tests.
"""
import hashlib

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.core.exceptions import NON_FIELD_ERRORS
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

_PREFIX = "login-failures"


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def _keys(*, username: str, client: str) -> tuple[str, str]:
    """Cache keys for (username, client) and for the client alone; hashed, as usernames are untrusted."""
    user_digest = hashlib.sha256(f"{username.strip().lower()}\x00{client}".encode()).hexdigest()
    client_digest = hashlib.sha256(client.encode()).hexdigest()
    return f"{_PREFIX}:user:{user_digest}", f"{_PREFIX}:client:{client_digest}"


def client_address(request: HttpRequest) -> str:
    """The peer address. X-Forwarded-For is not trusted: anyone can set it (the proxy must not be bypassed)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def login_is_throttled(*, username: str, client: str) -> bool:
    """True when this username from this client, or this client overall, has failed too often lately."""
    user_key, client_key = _keys(username=username, client=client)
    counts = cache.get_many([user_key, client_key])
    return (counts.get(user_key, 0) >= _setting("LOGIN_THROTTLE_FAILURES", 5)
            or counts.get(client_key, 0) >= _setting("LOGIN_THROTTLE_CLIENT_FAILURES", 30))


def login_failure_record(*, username: str, client: str) -> None:
    """Count one failed log-in; the window starts with the first failure (cache.add keeps it fixed)."""
    window = _setting("LOGIN_THROTTLE_WINDOW_S", 15 * 60)
    for key in _keys(username=username, client=client):
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: start a fresh window
            cache.set(key, 1, timeout=window)


def login_failures_clear(*, username: str, client: str) -> None:
    """A successful log-in forgets this username's failures from this client (not the client's total)."""
    cache.delete(_keys(username=username, client=client)[0])


def _throttled_message() -> str:
    minutes = max(_setting("LOGIN_THROTTLE_WINDOW_S", 15 * 60) // 60, 1)
    return f"Too many failed log-ins. Try again in {minutes} minutes."


class ThrottledLoginView(auth_views.LoginView):
    """Django's LoginView (session key rotated at login, `next=` checked against ALLOWED_HOSTS) + throttling."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150]
        if login_is_throttled(username=username, client=client_address(request)):
            # A bound form whose errors are set up front: full_clean() never runs, so no password is checked.
            form = self.get_form_class()(request=request, data={"username": username})
            form._errors = ErrorDict({NON_FIELD_ERRORS: form.error_class([_throttled_message()])})
            form.cleaned_data = {}
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        login_failure_record(username=str(self.request.POST.get("username", ""))[:150],
                             client=client_address(self.request))
        return super().form_invalid(form)

    def form_valid(self, form):
        login_failures_clear(username=form.get_user().get_username(), client=client_address(self.request))
        return super().form_valid(form)


class Throttled(exceptions.APIException):
    status_code = 429
    default_code = "throttled"


class ThrottledBasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic auth for API clients, under the same failure counters as the login page."""

    def authenticate_credentials(self, userid, password, request=None):
        client = client_address(request) if request is not None else "unknown"
        if login_is_throttled(username=userid, client=client):
            raise Throttled(_throttled_message())
        try:
            result = super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            login_failure_record(username=userid, client=client)
            raise
        login_failures_clear(username=userid, client=client)
        return result


class ThrottledBasicScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that the throttled Basic auth is plain HTTP Basic in the OpenAPI schema."""

    target_class = "webapp.security.ThrottledBasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}
