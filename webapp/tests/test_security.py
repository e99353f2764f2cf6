"""Security properties of the whole site: headers on every page, Host validation, no open redirect,
login throttling, session rotation/invalidation, CSRF on every state-changing URL, mass assignment,
filter parameters, and no unpickling of untrusted data in the app's own code."""
import ast
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from annotation.models import Assignment, PairwiseComparison, Ranking, Round
from annotation.services import assignment_next_for_labeler
from webapp.tests.urlmatrix import fill_pattern, site_patterns

pytestmark = pytest.mark.django_db
ROOT = Path(settings.BASE_DIR)
READ_ONLY_HTML = {"/api/docs/"}  # GET-only Swagger page: DRF's CSRF 403 is rendered as a bare "403 Forbidden"


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # throttle counters must not leak between tests
    yield
    cache.clear()


@pytest.fixture
def site(make_user, make_project):
    """A project with a labeler who holds a lease, a researcher and an admin."""
    labeler, researcher = make_user("lab"), make_user("res")
    admin = make_user("root", is_superuser=True, is_staff=True)
    project = make_project(slug="alpha", k=3, prompts=2, labelers=[labeler], researchers=[researcher])
    assignment = assignment_next_for_labeler(project=project, labeler=labeler)
    return {"labeler": labeler, "researcher": researcher, "admin": admin, "project": project,
            "assignment": assignment}


def _ids(site) -> dict:
    return {"slug": site["project"].slug, "assignment_id": site["assignment"].pk, "run_id": 999999,
            "artifact_id": 999999, "prompt_id": site["assignment"].prompt_id, "arena_id": 999999}


def test_every_page_sends_csp_frame_and_sniff_headers(site, client):
    client.force_login(site["admin"])
    urls = ["/accounts/login/", "/", "/no-such-page/", "/admin/", "/api/schema/", "/api/projects/"]
    urls += [fill_pattern(p, _ids(site)) for p in site_patterns()]
    for url in urls:
        response = client.get(url)
        assert response.status_code < 500, url
        csp = response.headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], url
        assert "frame-ancestors 'none'" in csp, url
        assert response.headers.get("X-Frame-Options") == "DENY", url
        assert response.headers.get("X-Content-Type-Options") == "nosniff", url


def test_bad_host_header_is_rejected_with_400(client):
    assert client.get("/accounts/login/", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/accounts/login/", HTTP_HOST="127.0.0.1.evil.example").status_code == 400
    assert client.get("/accounts/login/").status_code == 200


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "http:evil.example",
                                    "https:/\\evil.example", "/\\evil.example", "javascript:alert(1)"])
def test_login_next_never_redirects_off_site(site, target):
    client = Client()
    response = client.post(f"/accounts/login/?next={target}", {"username": "lab", "password": "pw-lab", "next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == reverse(settings.LOGIN_REDIRECT_URL)


def test_login_next_on_site_is_followed(site):
    response = Client().post("/accounts/login/", {"username": "lab", "password": "pw-lab", "next": "/p/alpha/"})
    assert response.headers["Location"] == "/p/alpha/"


def test_login_is_throttled_after_repeated_failures(site):
    client = Client()
    limit = settings.LOGIN_THROTTLE_FAILURES
    for _ in range(limit):
        assert client.post("/accounts/login/", {"username": "lab", "password": "wrong"}).status_code == 200
    blocked = client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"})  # even the right one
    assert blocked.status_code == 429
    assert "Too many failed log-ins" in blocked.content.decode()
    assert "_auth_user_id" not in client.session
    assert Client().post("/accounts/login/", {"username": "res", "password": "pw-res"}).status_code == 302  # others unaffected
    cache.clear()  # the window passes
    assert client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"}).status_code == 302


def test_success_clears_the_failure_count(site):
    client = Client()
    for _ in range(settings.LOGIN_THROTTLE_FAILURES - 1):
        client.post("/accounts/login/", {"username": "lab", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"}).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(settings.LOGIN_THROTTLE_FAILURES - 1):
        client.post("/accounts/login/", {"username": "lab", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"}).status_code == 302


def test_api_basic_auth_shares_the_throttle(site):
    client = Client()
    bad = {"HTTP_AUTHORIZATION": "Basic " + __import__("base64").b64encode(b"lab:wrong").decode()}
    good = {"HTTP_AUTHORIZATION": "Basic " + __import__("base64").b64encode(b"lab:pw-lab").decode()}
    assert client.get("/api/projects/", **good).status_code == 200
    for _ in range(settings.LOGIN_THROTTLE_FAILURES):
        assert client.get("/api/projects/", **bad).status_code in (401, 403)
    assert client.get("/api/projects/", **good).status_code == 429


def _session_with_data(client: Client) -> str:
    session = client.session
    session["pre-login"] = True
    session.save()
    client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
    return session.session_key


def test_session_key_rotates_at_login(site):
    client = Client()
    before = _session_with_data(client)
    assert client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"}).status_code == 302
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not Session.objects.filter(session_key=before).exists()  # fixation: the old key is dead


def test_logout_invalidates_the_session_server_side(site):
    client = Client()
    client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"})
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert client.get("/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405  # logout is POST only (no CSRF-able GET logout)
    client.post("/accounts/logout/")
    assert not Session.objects.filter(session_key=key).exists()
    replay = Client()
    replay.cookies[settings.SESSION_COOKIE_NAME] = key  # a stolen cookie replayed after logout
    assert replay.get("/").status_code == 302


def test_password_change_keeps_this_session_and_ends_the_others(site):
    here, elsewhere = Client(), Client()
    for c in (here, elsewhere):
        assert c.post("/accounts/login/", {"username": "lab", "password": "pw-lab"}).status_code == 302
    response = here.post("/accounts/password_change/", {
        "old_password": "pw-lab", "new_password1": "a-much-longer-Passw0rd!", "new_password2": "a-much-longer-Passw0rd!"})
    assert response.status_code == 302
    assert here.get("/").status_code == 200
    assert elsewhere.get("/").status_code == 302  # session auth hash no longer matches
    assert elsewhere.get("/api/projects/").status_code == 403


def test_password_set_by_admin_logs_the_user_out_everywhere(site):
    client = Client()
    client.post("/accounts/login/", {"username": "lab", "password": "pw-lab"})
    site["labeler"].set_password("another-long-password-1")
    site["labeler"].save()
    assert client.get("/").status_code == 302


def _db_counts() -> tuple:
    return (Ranking.objects.count(), PairwiseComparison.objects.count(), Round.objects.count(),
            Assignment.objects.exclude(status=Assignment.Status.ACTIVE).count())


def test_every_state_changing_url_requires_a_csrf_token(site):
    """POST without a token to every URL pattern, as an admin (who may do everything): 403 or 405, nothing written."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(site["admin"])
    site["assignment"].labeler = site["admin"]  # the admin's own lease, so submit/skip would otherwise succeed
    site["assignment"].save()
    before = _db_counts()
    checked = 0
    for pattern in site_patterns():
        url = fill_pattern(pattern, _ids(site))
        for data in ({}, {"tiers": "[]"}):
            response = client.post(url, data)
            assert response.status_code in (403, 405), (url, response.status_code)
            if response.status_code == 403 and url not in READ_ONLY_HTML:
                assert b"CSRF" in response.content, url
                checked += 1
        htmx = client.post(url, {}, headers={"HX-Request": "true"})
        assert htmx.status_code in (403, 405), url
    assert checked >= 8
    assert _db_counts() == before


def test_csrf_token_in_htmx_header_is_accepted(site):
    client = Client(enforce_csrf_checks=True)
    client.force_login(site["labeler"])
    page = client.get("/p/alpha/label/")
    token = re.search(r'"X-CSRFToken":\s*"([^"]+)"', page.content.decode()).group(1)
    assignment = site["assignment"]
    order = assignment.shown_order
    data = {f"rank_{sid}": str(i + 1) for i, sid in enumerate(order)}
    response = client.post(f"/assignments/{assignment.pk}/submit/", data, headers={"HX-Request": "true", "X-CSRFToken": token})
    assert response.status_code == 200
    assert Ranking.objects.filter(labeler=site["labeler"]).count() == 1


@pytest.mark.parametrize("extra", [{"labeler": "res"}, {"project": "other"}, {"source": "imported"},
                                   {"is_gold": True}, {"role": "researcher"}, {"assignment": 1}])
def test_mass_assignment_in_ranking_body_is_rejected(site, client, extra):
    client.force_login(site["labeler"])
    assignment = site["assignment"]
    body = {"tiers": [[sid] for sid in assignment.shown_order], **extra}
    response = client.post(f"/api/assignments/{assignment.pk}/ranking/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["location"] == next(iter(extra))
    assert Ranking.objects.count() == 0


def test_mass_assignment_in_run_body_is_rejected(site, client):
    client.force_login(site["researcher"])
    for field in ("project", "status", "launched_by", "attempts", "max_attempts"):
        response = client.post("/api/projects/alpha/runs/", {"kind": "reward", "config": {}, field: 1},
                               content_type="application/json")
        assert response.status_code == 400, field
    from training.models import TrainingRun
    assert TrainingRun.objects.count() == 0


@pytest.mark.parametrize("param", ["labeler__password__startswith=md5", "labeler__username=res",
                                   "prompt__project__slug=zzz", "ordering=labeler__password", "search=pw",
                                   "labeler=1", "limit=1000000", "offset=-5"])
def test_filter_params_cannot_reach_through_relations(site, client, param):
    researcher_ranks = Client()
    researcher_ranks.force_login(site["labeler"])
    assignment = site["assignment"]
    researcher_ranks.post(f"/api/assignments/{assignment.pk}/ranking/",
                          {"tiers": [[s] for s in assignment.shown_order]}, content_type="application/json")
    client.force_login(site["researcher"])
    for url in ("/api/projects/alpha/rankings/", "/api/projects/", "/api/projects/alpha/runs/",
                "/api/projects/alpha/artifacts/"):
        plain = client.get(url)
        filtered = client.get(f"{url}?{param}")
        if param.startswith(("limit", "offset")):
            assert filtered.status_code in (200, 400), url
            continue
        assert filtered.status_code == plain.status_code == 200, url
        assert filtered.json() == plain.json(), (url, param)  # the parameter changed nothing
        assert "md5$" not in filtered.content.decode() and "password" not in filtered.content.decode()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield node, owner, name


def _app_sources():
    for app in ("annotation", "training", "webapp"):
        for path in (ROOT / app).rglob("*.py"):
            if "tests" not in path.parts and "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), filename=str(path))


def test_app_code_never_unpickles_untrusted_data():
    """torch.load only with weights_only=True; no pickle/joblib/dill loads; HF weights via safetensors."""
    problems = []
    for path, tree in _app_sources():
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if owner == "torch" and name == "load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                if not weights_only or getattr(weights_only[0].value, "value", None) is not True:
                    problems.append(f"{where} torch.load without weights_only=True")
            if owner in {"pickle", "joblib", "dill", "cloudpickle", "marshal"} and name in {"load", "loads"}:
                problems.append(f"{where} {owner}.{name}")
            if name == "from_pretrained" and any(k.arg == "use_safetensors" and getattr(k.value, "value", None) is False
                                                 for k in node.keywords):
                problems.append(f"{where} from_pretrained(use_safetensors=False)")
            if name == "save_pretrained" and any(k.arg == "safe_serialization" and getattr(k.value, "value", None) is False
                                                 for k in node.keywords):
                problems.append(f"{where} save_pretrained(safe_serialization=False)")
    assert problems == []


def test_app_code_fetches_no_urls():
    """The app fetches nothing from the network (so no SSRF surface): no HTTP client imports in app code.
    Models load from local directories only (see docs/guarantees.md); if this ever changes, the fetch must
    validate the address against private and loopback ranges after every redirect, and this test must say so."""
    clients = {"requests", "httpx", "urllib3", "aiohttp", "urllib.request", "http.client", "pycurl"}
    found = []
    for path, tree in _app_sources():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n in clients]
    assert found == []
