"""Login throttling that slows password guessing without handing attackers a lock-out switch.

Django checks passwords but does not limit how often one may guess. Every log-in (the login page, the
Django admin's login page and HTTP Basic authentication of the API) goes through here. Failures are
counted in the cache within ``LOGIN_THROTTLE_WINDOW_S`` seconds, and an attempt is refused with HTTP 429
before the password is checked when:

- this username failed ``LOGIN_THROTTLE_FAILURES`` times from this client address, or
- this client address failed ``LOGIN_THROTTLE_CLIENT_FAILURES`` times in all, or
- this username failed ``LOGIN_THROTTLE_USER_FAILURES`` times from anywhere: then each further failure
  blocks it for a short, exponential back-off (1 s, 2 s, 4 s … at most ``LOGIN_THROTTLE_BACKOFF_MAX_S``).

So failures at one address never lock a user out at another, and a distributed attacker buys at most a
short back-off. A browser that logged in successfully gets a signed "known device" cookie (a random device
id and the hashed usernames that logged in on it). From a known device none of the counters above
apply: only its own per-(username, device) counter does, which nobody without that cookie can raise, so
the right password from the user's own browser is never blocked by someone else's failures. A successful
log-in clears the username's counters for that client and its back-off.

The counters live in Django's cache: the Redis cache in production (``REDIS_URL``), so that every
gunicorn worker shares them; a per-process local-memory cache in development and tests.
"""
import hashlib
import math
import secrets
import time

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth import views as auth_views
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import NON_FIELD_ERRORS
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

_PREFIX = "login-failures"
_DEVICE_SALT = "webapp.security.known-device"
_DEVICE_MAX_USERS = 8  # usernames remembered per browser


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def _now() -> float:
    return time.time()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _user(username: str) -> str:
    return username.strip().lower()


def _keys(*, username: str, client: str) -> dict[str, str]:
    """Cache keys (hashed, as usernames are untrusted) of the counters an unknown device is subject to."""
    return {"pair": f"{_PREFIX}:user:{_digest(_user(username), client)}",
            "client": f"{_PREFIX}:client:{_digest(client)}",
            "user": f"{_PREFIX}:any:{_digest(_user(username))}",
            "backoff": f"{_PREFIX}:backoff:{_digest(_user(username))}"}


def _device_key(*, username: str, device: str) -> str:
    return f"{_PREFIX}:device:{_digest(_user(username), device)}"


def client_address(request: HttpRequest) -> str:
    """The peer address. X-Forwarded-For is not trusted: anyone can set it (the proxy must not be bypassed)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


# ----------------------------------------------------------------------------- known devices
def _device_cookie(request: HttpRequest) -> dict | None:
    raw = request.COOKIES.get(settings.LOGIN_KNOWN_DEVICE_COOKIE)
    if not raw:
        return None
    try:
        value = signing.loads(raw, salt=_DEVICE_SALT, max_age=settings.LOGIN_KNOWN_DEVICE_MAX_AGE_S)
    except signing.BadSignature:  # forged, tampered or expired: an unknown device
        return None
    if not isinstance(value, dict) or not isinstance(value.get("d"), str) or not isinstance(value.get("u"), list):
        return None
    return value


def known_device(request: HttpRequest, *, username: str) -> str | None:
    """The device id when this browser logged in as this username before (signed cookie), else None."""
    value = _device_cookie(request)
    if value is None or _digest(_user(username))[:32] not in value["u"]:
        return None
    return value["d"]


def known_device_remember(request: HttpRequest, response: HttpResponse, *, username: str) -> None:
    """Set (or extend) the signed known-device cookie after a successful log-in as ``username``."""
    value = _device_cookie(request) or {"d": secrets.token_urlsafe(18), "u": []}
    user = _digest(_user(username))[:32]
    users = [u for u in value["u"] if u != user][-(_DEVICE_MAX_USERS - 1):] + [user]
    response.set_cookie(
        settings.LOGIN_KNOWN_DEVICE_COOKIE, signing.dumps({"d": value["d"], "u": users}, salt=_DEVICE_SALT),
        max_age=settings.LOGIN_KNOWN_DEVICE_MAX_AGE_S, httponly=True, samesite="Lax",
        secure=settings.SESSION_COOKIE_SECURE,
    )


# ----------------------------------------------------------------------------- counters
def login_throttle_wait(*, username: str, client: str, device: str | None = None) -> int:
    """Seconds this attempt must wait (0: go ahead and check the password)."""
    window = _setting("LOGIN_THROTTLE_WINDOW_S", 15 * 60)
    if device is not None:
        failures = cache.get(_device_key(username=username, device=device), 0)
        return window if failures >= _setting("LOGIN_THROTTLE_FAILURES", 5) else 0
    keys = _keys(username=username, client=client)
    counts = cache.get_many(list(keys.values()))
    if (counts.get(keys["pair"], 0) >= _setting("LOGIN_THROTTLE_FAILURES", 5)
            or counts.get(keys["client"], 0) >= _setting("LOGIN_THROTTLE_CLIENT_FAILURES", 30)):
        return window
    return max(math.ceil(counts.get(keys["backoff"], 0) - _now()), 0)


def _count(key: str, window: int) -> int:
    """One more failure in a fixed window that starts with the first failure (cache.add keeps it fixed)."""
    cache.add(key, 0, timeout=window)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: start a fresh window
        cache.set(key, 1, timeout=window)
        return 1


def login_failure_record(*, username: str, client: str, device: str | None = None) -> None:
    """Count one failed log-in: on the device's own counter from a known device, else on the others."""
    window = _setting("LOGIN_THROTTLE_WINDOW_S", 15 * 60)
    if device is not None:
        _count(_device_key(username=username, device=device), window)
        return
    keys = _keys(username=username, client=client)
    _count(keys["pair"], window)
    _count(keys["client"], window)
    beyond = _count(keys["user"], window) - _setting("LOGIN_THROTTLE_USER_FAILURES", 10)
    if beyond >= 0:  # exponential back-off for the username, everywhere but on known devices
        wait = min(2 ** min(beyond, 30), _setting("LOGIN_THROTTLE_BACKOFF_MAX_S", 30))
        cache.set(keys["backoff"], _now() + wait, timeout=wait + 1)


def login_failures_clear(*, username: str, client: str, device: str | None = None) -> None:
    """A successful log-in forgets this username's failures from this client or device, and its back-off
    (not the client's total, which counts guesses at every username)."""
    keys = _keys(username=username, client=client)
    stale = [keys["pair"], keys["user"], keys["backoff"]]
    if device is not None:
        stale.append(_device_key(username=username, device=device))
    cache.delete_many(stale)


def _throttled_message(seconds: int) -> str:
    wait = f"{math.ceil(seconds / 60)} minutes" if seconds >= 120 else f"{seconds} seconds"
    return f"Too many failed log-ins. Try again in {wait}."


# ----------------------------------------------------------------------------- views and API auth
class ThrottledLoginView(auth_views.LoginView):
    """Django's LoginView (session key rotated at login, `next=` checked against ALLOWED_HOSTS) + throttling."""

    def _attempt(self) -> tuple[str, str, str | None]:
        username = str(self.request.POST.get("username", ""))[:150]
        return username, client_address(self.request), known_device(self.request, username=username)

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username, client, device = self._attempt()
        wait = login_throttle_wait(username=username, client=client, device=device)
        if wait:
            # A bound form whose errors are set up front: full_clean() never runs, so no password is checked.
            form = self.get_form_class()(request=request, data={"username": username})
            form._errors = ErrorDict({NON_FIELD_ERRORS: form.error_class([_throttled_message(wait)])})
            form.cleaned_data = {}
            response = self.render_to_response(self.get_context_data(form=form), status=429)
            response["Retry-After"] = str(wait)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        username, client, device = self._attempt()
        login_failure_record(username=username, client=client, device=device)
        return super().form_invalid(form)

    def form_valid(self, form):
        username, client, device = self._attempt()
        login_failures_clear(username=username, client=client, device=device)
        response = super().form_valid(form)
        known_device_remember(self.request, response, username=form.get_user().get_username())
        return response


class ThrottledAdminLoginView(ThrottledLoginView):
    """The Django admin's login page (as ``AdminSite.login`` builds it) under the same throttle."""

    authentication_form = AdminAuthenticationForm
    template_name = "admin/login.html"

    def get_context_data(self, **kwargs):
        context = {**admin.site.each_context(self.request), "title": "Log in", "subtitle": None,
                   "app_path": self.request.get_full_path(), "username": self.request.user.get_username()}
        if REDIRECT_FIELD_NAME not in self.request.GET and REDIRECT_FIELD_NAME not in self.request.POST:
            context[REDIRECT_FIELD_NAME] = reverse("admin:index")
        return {**super().get_context_data(**kwargs), **context}

    def get_default_redirect_url(self):
        return reverse("admin:index")


def admin_login(request: HttpRequest) -> HttpResponse:
    """Routed at /admin/login/ ahead of the admin site, so its login goes through the throttle."""
    if request.method == "GET" and admin.site.has_permission(request):
        return HttpResponseRedirect(reverse("admin:index"))
    request.current_app = admin.site.name
    return ThrottledAdminLoginView.as_view()(request)


class Throttled(exceptions.APIException):
    status_code = 429
    default_code = "throttled"

    def __init__(self, wait: int) -> None:
        super().__init__(_throttled_message(wait))
        self.wait = wait  # DRF's exception handler sends it as Retry-After


class ThrottledBasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic auth for API clients, under the same failure counters as the login page."""

    def authenticate_credentials(self, userid, password, request=None):
        client = client_address(request) if request is not None else "unknown"
        device = known_device(request, username=userid) if request is not None else None
        wait = login_throttle_wait(username=userid, client=client, device=device)
        if wait:
            raise Throttled(wait)
        try:
            result = super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            login_failure_record(username=userid, client=client, device=device)
            raise
        login_failures_clear(username=userid, client=client, device=device)
        return result


class ThrottledBasicScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that the throttled Basic auth is plain HTTP Basic in the OpenAPI schema."""

    target_class = "webapp.security.ThrottledBasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}
