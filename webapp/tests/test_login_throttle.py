"""Log-in (webapp/security.py): the admin's login page is throttled like the site's, failures
never hand an attacker a switch to lock a user out (issue #10, item 3), and the API docs need a log-in."""
import base64

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from webapp import security

pytestmark = pytest.mark.django_db
LOGIN, ADMIN_LOGIN = "/accounts/login/", "/admin/login/"


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def users(make_user):
    return {"lab": make_user("lab"), "root": make_user("root", is_superuser=True, is_staff=True)}


def _at(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def _login(client: Client, username: str, password: str, url: str = LOGIN):
    return client.post(url, {"username": username, "password": password})


def test_admin_login_is_throttled_like_the_site_login(users):
    attacker = _at("10.0.0.1")
    statuses = [_login(attacker, "root", f"guess-{i}", ADMIN_LOGIN).status_code for i in range(43)]
    assert statuses[:settings.LOGIN_THROTTLE_FAILURES] == [200] * settings.LOGIN_THROTTLE_FAILURES
    assert set(statuses[settings.LOGIN_THROTTLE_FAILURES:]) == {429}
    right = _login(attacker, "root", "pw-root", ADMIN_LOGIN)
    assert right.status_code == 429 and "Too many failed log-ins" in right.content.decode()
    assert "_auth_user_id" not in attacker.session
    assert attacker.get("/admin/").status_code == 302  # still not in


def test_admin_login_still_logs_an_admin_in(users):
    client = _at("10.0.0.9")
    assert client.get(ADMIN_LOGIN).status_code == 200
    response = _login(client, "root", "pw-root", ADMIN_LOGIN)
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert client.get(ADMIN_LOGIN).status_code == 302  # logged in: straight to the index


def test_failures_at_one_address_do_not_lock_the_user_out_at_another(users):
    attacker = _at("10.0.0.1")
    for i in range(8):
        _login(attacker, "lab", f"guess-{i}")
    assert _login(attacker, "lab", "pw-lab").status_code == 429
    assert _login(_at("10.0.0.2"), "lab", "pw-lab").status_code == 302
    basic = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"lab:pw-lab").decode()}
    assert _at("10.0.0.3").get("/api/projects/", **basic).status_code == 200
    refused = attacker.get("/api/projects/", **basic)  # the API's Basic auth shares the counters
    assert refused.status_code == 429 and int(refused["Retry-After"]) == settings.LOGIN_THROTTLE_WINDOW_S


def test_the_right_password_from_a_known_device_is_never_blocked(users):
    own = _at("10.0.0.5")  # the user's browser, behind the same NAT as one attacker
    assert _login(own, "lab", "pw-lab").status_code == 302
    assert settings.LOGIN_KNOWN_DEVICE_COOKIE in own.cookies
    own.post("/accounts/logout/")
    for address in ("10.0.0.5", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"):
        attacker = _at(address)
        for i in range(settings.LOGIN_THROTTLE_CLIENT_FAILURES + 5):
            _login(attacker, "lab", f"guess-{i}")
    assert _login(_at("10.0.0.5"), "lab", "pw-lab").status_code == 429  # same address, unknown device
    assert _login(own, "lab", "pw-lab").status_code == 302  # known device: let in
    own.post("/accounts/logout/")
    assert _login(own, "lab", "pw-lab", ADMIN_LOGIN).status_code == 200  # not staff: refused, not throttled


def test_a_known_device_is_throttled_on_its_own_counter(users):
    own = _at("10.0.0.5")
    _login(own, "lab", "pw-lab")
    own.post("/accounts/logout/")
    for i in range(settings.LOGIN_THROTTLE_FAILURES):
        assert _login(own, "lab", f"wrong-{i}").status_code == 200
    assert _login(own, "lab", "pw-lab").status_code == 429
    assert _login(_at("10.0.0.6"), "lab", "pw-lab").status_code == 302  # and locks nobody else out


def test_a_forged_or_foreign_device_cookie_is_an_unknown_device(users):
    own = _at("10.0.0.5")
    _login(own, "lab", "pw-lab")
    genuine = own.cookies[settings.LOGIN_KNOWN_DEVICE_COOKIE].value
    attacker = _at("10.0.0.1")
    for i in range(settings.LOGIN_THROTTLE_FAILURES):
        _login(attacker, "root", f"guess-{i}")
    attacker.cookies[settings.LOGIN_KNOWN_DEVICE_COOKIE] = genuine  # lab's device: not root's
    assert _login(attacker, "root", "pw-root").status_code == 429
    attacker.cookies[settings.LOGIN_KNOWN_DEVICE_COOKIE] = genuine[:-2] + "xx"
    assert _login(attacker, "root", "pw-root").status_code == 429


def test_the_per_username_back_off_is_short_and_exponential(users, monkeypatch):
    clock = {"now": 1_000_000.0}
    monkeypatch.setattr(security, "_now", lambda: clock["now"])
    limit = settings.LOGIN_THROTTLE_USER_FAILURES
    waits = []
    for i in range(limit + 8):  # a distributed attacker: a fresh address for every guess
        response = _login(_at(f"10.1.{i}.1"), "lab", f"guess-{i}")
        assert response.status_code == 200
        waits.append(security.login_throttle_wait(username="lab", client="10.9.9.9"))
        clock["now"] += waits[-1]  # the attacker waits out the back-off
    assert waits[:limit - 1] == [0] * (limit - 1)
    assert waits[limit - 1:] == [1, 2, 4, 8, 16, 30, 30, 30, 30]  # capped at LOGIN_THROTTLE_BACKOFF_MAX_S
    clock["now"] -= 1
    blocked = _login(_at("10.2.0.1"), "lab", "pw-lab")
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) <= settings.LOGIN_THROTTLE_BACKOFF_MAX_S
    clock["now"] += 1
    assert _login(_at("10.2.0.1"), "lab", "pw-lab").status_code == 302
    assert security.login_throttle_wait(username="lab", client="10.9.9.9") == 0  # success clears the back-off


def test_the_api_schema_and_docs_require_login(users):
    anonymous = Client()
    assert anonymous.get("/api/schema/").status_code in (401, 403)
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/accounts/login/")
    member = Client()
    member.force_login(users["lab"])
    assert member.get("/api/schema/").status_code == 200
    assert member.get("/api/docs/").status_code == 200
