"""Authorization matrix. Every URL pattern of the site (read from the resolver) must be listed in
``urlmatrix.ROUTE_ROLES`` with the role that may read it and the role that may write it, and each role
(anonymous, the lease's labeler, another labeler, researcher, admin) gets exactly that: allowed below the
listed role is refused (login redirect, 401, 403 or 404), 405 where a method is not offered. Then every
pattern is called by members of project A with the ids of project B's objects: the answer is 403/404/405,
no B data appears in any body, and no B row changes. Then a labeler OF project B tries what only
researchers may do, and tries to see another labeler's work."""
import pytest
from django.core.cache import cache
from django.test import Client

from lab.services import arena_create
from annotation.models import Assignment, Membership, PairwiseComparison, Project, Prompt, Ranking, Round
from annotation.services import assignment_next_for_labeler, ranking_submit
from training.models import ModelArtifact, TrainingRun
from webapp.tests.urlmatrix import ANON, ROUTE_ROLES, fill_pattern, pattern_params, role_may, site_patterns

pytestmark = pytest.mark.django_db
SECRET = "BRAVO-SECRET"
NO_OBJECT_POST_SKIPPED = {"/accounts/logout/", "/accounts/login/", "/accounts/password_change/"}


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    """These tests post bad log-ins (/admin/login/, /accounts/login/): leave no counters to later tests."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def world(make_user, make_project):
    alice, res_a = make_user("alice"), make_user("res_a")
    bob, carol, res_b = make_user("bob"), make_user("carol"), make_user("res_b")
    alpha = make_project(slug="alpha", k=3, prompts=2, labelers=[alice], researchers=[res_a])
    bravo = make_project(slug="bravo", k=3, prompts=3, overlap=2, labelers=[bob, carol], researchers=[res_b])
    Project.objects.filter(pk=bravo.pk).update(name=f"{SECRET} project", guidelines=f"{SECRET} guidelines")
    Prompt.objects.filter(project=bravo).update(messages=[{"role": "user", "content": f"{SECRET} prompt"}])
    done = assignment_next_for_labeler(project=bravo, labeler=bob)
    ranking_submit(assignment_id=done.pk, labeler=bob, tiers=[[s] for s in done.shown_order], time_spent_ms=1)
    open_lease = assignment_next_for_labeler(project=bravo, labeler=bob)
    run = TrainingRun.objects.create(project=bravo, kind=TrainingRun.Kind.REWARD, config={"note": SECRET})
    artifact = ModelArtifact.objects.create(project=bravo, kind=ModelArtifact.Kind.REWARD, name=f"{SECRET} model",
                                            path="missing/dir", run=run)
    policies = [ModelArtifact.objects.create(project=bravo, kind=ModelArtifact.Kind.POLICY, name=f"{SECRET} policy {i}",
                                             path="missing/dir") for i in range(2)]
    arena = arena_create(project=bravo, model_a=policies[0], model_b=policies[1], name=f"{SECRET} arena",
                         items=[{"prompt": f"{SECRET} arena prompt", "response_a": "x", "response_b": "y"}])
    ids = {"slug": bravo.slug, "assignment_id": open_lease.pk, "run_id": run.pk, "artifact_id": artifact.pk,
           "prompt_id": done.prompt_id, "arena_id": arena.pk}
    return {"alice": alice, "res_a": res_a, "bob": bob, "carol": carol, "res_b": res_b, "alpha": alpha,
            "bravo": bravo, "ids": ids, "open_lease": open_lease, "bob_ranking": Ranking.objects.get(labeler=bob)}


def _bravo_state(bravo: Project) -> tuple:
    return (
        Ranking.objects.filter(prompt__project=bravo).count(),
        PairwiseComparison.objects.filter(prompt__project=bravo).count(),
        Round.objects.filter(project=bravo).count(),
        sorted(Assignment.objects.filter(prompt__project=bravo).values_list("pk", "status", "labeler_id")),
        sorted(TrainingRun.objects.filter(project=bravo).values_list("pk", "status", "cancel_requested")),
        Membership.objects.filter(project=bravo).count(),
    )


def _body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


@pytest.mark.parametrize("who", ["alice", "res_a"])
def test_members_of_a_reach_nothing_of_b(world, who):
    client = Client()
    client.force_login(world[who])
    before = _bravo_state(world["bravo"])
    checked = 0
    for pattern in site_patterns():
        url = fill_pattern(pattern, world["ids"])
        targets_b = bool(pattern_params(pattern))
        calls = [("GET", {}), ("GET", {"HX-Request": "true"})]
        if targets_b or url not in NO_OBJECT_POST_SKIPPED:
            calls += [("POST", {}), ("POST", {"HX-Request": "true"})]
        for method, headers in calls:
            if method == "GET":
                response = client.get(url, headers=headers)
            else:
                response = client.post(url, {"tiers": [[1]], "reason": "x", "kind": "reward", "config": {}},
                                       content_type="application/json", headers=headers)
            if targets_b:
                assert response.status_code in (403, 404, 405), (who, method, url, response.status_code)
                checked += 1
            else:
                assert response.status_code < 500, (who, method, url)
            assert SECRET not in _body(response), (who, method, url)
            assert "bravo" not in _body(response).lower() or response.status_code in (403, 404, 405), (who, method, url)
    assert checked >= 60
    assert _bravo_state(world["bravo"]) == before


def test_every_route_is_listed_with_its_roles():
    """A new route fails here until urlmatrix.ROUTE_ROLES says who may read and who may write it."""
    routes = site_patterns()
    assert sorted(set(routes) - set(ROUTE_ROLES)) == [], "routes missing from urlmatrix.ROUTE_ROLES"
    assert sorted(set(ROUTE_ROLES) - set(routes)) == [], "urlmatrix.ROUTE_ROLES lists routes that do not exist"


def _refused(response) -> bool:
    location = response.headers.get("Location", "")
    return response.status_code in (401, 403, 404) or (response.status_code == 302 and "login/?next=" in location)


def test_each_role_reads_and_writes_exactly_what_the_matrix_says(world, make_user):
    users = {"anonymous": (ANON, None, False), "bob": ("labeler", world["bob"], True),
             "carol": ("labeler", world["carol"], False), "res_b": ("researcher", world["res_b"], False),
             "root": ("admin", make_user("root", is_superuser=True, is_staff=True), False)}
    checked = 0
    for method in ("get", "post"):  # every read first: writes (cancel, close) change what later reads see
        for pattern in site_patterns():
            needed = ROUTE_ROLES[pattern][0 if method == "get" else 1]
            url = fill_pattern(pattern, world["ids"])
            for who, (role, user, is_owner) in users.items():
                cache.clear()  # log-in throttle counters: every client here shares one address
                client = Client()
                if user is not None:
                    client.force_login(user)
                response = client.get(url) if method == "get" else client.post(url, {}, content_type="application/json")
                where = (method, pattern, who, response.status_code)
                if needed is None:
                    assert response.status_code == 405 or (user is None and _refused(response)), where
                elif role_may(needed=needed, role=role, is_owner=is_owner):
                    assert response.status_code not in (401, 403, 404, 405) and not _refused(response), where
                else:
                    assert _refused(response), where
                checked += 1
    assert checked == 2 * len(users) * len(ROUTE_ROLES)


def test_the_matrix_is_not_vacuous(world):
    """Members reach their own project on the same URLs (so the 404s above are about B, not broken URLs)."""
    client = Client()
    client.force_login(world["bob"])
    for url in ("/p/bravo/", "/api/projects/bravo/", "/api/projects/bravo/rankings/"):
        response = client.get(url)
        assert response.status_code == 200, url
    assert SECRET in client.get("/p/bravo/").content.decode()
    researcher = Client()
    researcher.force_login(world["res_b"])
    for url in ("/training/projects/bravo/runs/", f"/api/runs/{world['ids']['run_id']}/",
                f"/training/artifacts/{world['ids']['artifact_id']}/"):
        assert researcher.get(url).status_code == 200, url


def test_lists_never_show_b_rows_to_a(world):
    client = Client()
    client.force_login(world["alice"])
    projects = client.get("/api/projects/").json()
    assert [p["slug"] for p in projects] == ["alpha"]
    assert SECRET not in client.get("/").content.decode()
    assert client.get("/api/projects/bravo/rankings/").status_code == 404


def test_labeler_of_b_cannot_import_export_train_or_cancel(world, tmp_path):
    client = Client()
    client.force_login(world["carol"])
    before = _bravo_state(world["bravo"])
    upload = tmp_path / "x.jsonl"
    upload.write_text('{"prompt": "p", "responses": ["a", "b", "c"]}\n')
    run_id = world["ids"]["run_id"]
    with upload.open("rb") as handle:
        assert client.post("/p/bravo/import/", {"file": handle}).status_code == 403
    with upload.open("rb") as handle:
        assert client.post("/api/projects/bravo/import/", {"file": handle}).status_code == 403
    assert client.get("/p/bravo/export/?format=pairs&file_format=jsonl").status_code == 403
    assert client.get("/api/projects/bravo/export/?format=rankings").status_code == 403
    assert client.post("/training/projects/bravo/runs/", {"kind": "reward"}).status_code == 403
    assert client.post("/api/projects/bravo/runs/", {"kind": "reward", "config": {}},
                       content_type="application/json").status_code == 403
    assert client.post(f"/training/runs/{run_id}/cancel/").status_code == 404  # labelers see no run
    assert client.post(f"/api/runs/{run_id}/cancel/").status_code == 404
    assert _bravo_state(world["bravo"]) == before


def test_labeler_sees_only_their_own_rankings_and_leases(world):
    client = Client()
    client.force_login(world["carol"])
    bob_ranking, bob_lease = world["bob_ranking"], world["open_lease"]
    for query in ("", "?labeler=bob", f"?labeler={world['bob'].pk}", "?labeler__username=bob"):
        listed = client.get(f"/api/projects/bravo/rankings/{query}").json()
        assert listed["count"] == 0 and listed["results"] == [], query
    page = client.get("/p/bravo/").content.decode()
    assert f"Ranking #{bob_ranking.pk} " not in page
    before = _bravo_state(world["bravo"])
    tiers = [[s] for s in bob_lease.shown_order]
    assert client.post(f"/api/assignments/{bob_lease.pk}/ranking/", {"tiers": tiers},
                       content_type="application/json").status_code == 404
    assert client.post(f"/assignments/{bob_lease.pk}/submit/", {}).status_code == 404
    assert client.post(f"/assignments/{bob_lease.pk}/skip/", {"reason": "other"}).status_code == 404
    assert _bravo_state(world["bravo"]) == before
    researcher = Client()
    researcher.force_login(world["res_b"])
    assert researcher.get("/api/projects/bravo/rankings/").json()["count"] == 1  # researchers do see them


def test_non_staff_never_reach_the_admin(world):
    client = Client()
    client.force_login(world["res_b"])
    for url in ("/admin/", "/admin/annotation/ranking/", f"/admin/annotation/ranking/{world['bob_ranking'].pk}/change/",
                "/admin/auth/user/", "/admin/annotation/assignment/"):
        response = client.get(url)
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login/"), url
