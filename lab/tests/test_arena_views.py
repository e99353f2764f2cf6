"""Arena pages, API and command: members only (404 otherwise), researchers create and read the leaderboard,
voting is blind (no model name in what voters get) and every vote lands as a ranking."""
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from lab.services import arena_create, arena_vote
from lab.selectors import arena_shown_order
from lab.models import Arena, ArenaPair, ArenaVote
from annotation.models import PairwiseComparison, Ranking
from training.models import ModelArtifact

XSS = "<script>alert('arena')</script> **bold**"
NAMES = ("secret-sft-policy", "secret-dpo-policy")
ARENA_LIST_QUERIES = 12  # the API list and the page together, for 1 or 5 arenas (before: 3 more per arena in each)


@pytest.fixture
def site(make_user, make_project):
    res, lab, stranger = make_user("res"), make_user("lab"), make_user("stranger")
    project = make_project(slug="ar", k=3, prompts=1, labelers=[lab], researchers=[res])
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name=NAMES[0], path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name=NAMES[1], path="b")
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="named after secret-sft-policy",
                         user=res, items=[{"prompt": f"Q{i} {XSS}", "response_a": f"A{i} {XSS}",
                                           "response_b": f"B{i} plain"} for i in range(3)])
    clients = {}
    for name, user in (("res", res), ("lab", lab), ("stranger", stranger)):
        clients[name] = Client()
        clients[name].force_login(user)
    return {"project": project, "arena": arena, "lab_user": lab, "models": (model_a, model_b), **clients}


def test_pages_are_for_members_and_only_researchers_see_names_and_leaderboard(site, client):
    url = "/p/ar/arena/"
    researcher_page = site["res"].get(url).content.decode()
    assert NAMES[0] in researcher_page and "Leaderboard" in researcher_page and "New arena" in researcher_page
    labeler = site["lab"].get(url)
    assert labeler.status_code == 200
    html = labeler.content.decode()
    assert f"#{site['arena'].pk}" in html and "Vote" in html
    assert not any(name in html for name in NAMES) and "Leaderboard" not in html
    assert site["stranger"].get(url).status_code == 404
    assert site["stranger"].get(f"/p/ar/arena/{site['arena'].pk}/vote/").status_code == 404
    assert client.get(url).status_code == 302  # login first
    assert site["lab"].get("/p/ar/").status_code == 200


def test_the_voting_page_is_blind_and_escapes_responses(site):
    page = site["lab"].get(f"/p/ar/arena/{site['arena'].pk}/vote/")
    html = page.content.decode()
    assert page.status_code == 200
    assert not any(name in html for name in NAMES) and "secret" not in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html and "<strong>bold</strong>" in html
    assert html.count('name="choice"') == 4 and 'src="/static/app/arena.js"' in html
    assert 'hx-disable' in html


def _form(site, choice="left"):
    arena = site["arena"]
    user = site["lab_user"]
    pair = ArenaPair.objects.filter(arena=arena).exclude(votes__voter=user).first()
    left = arena_shown_order(pair=pair, voter=user)[0]
    return pair, {"pair": pair.pk, "left": left, "choice": choice, "time_spent_ms": "2500"}


def test_a_browser_vote_is_stored_as_a_ranking_and_the_next_pair_is_shown(site):
    url = f"/p/ar/arena/{site['arena'].pk}/vote/"
    pair, data = _form(site, choice="right")
    swapped = site["lab"].post(url, data, HTTP_HX_REQUEST="true")
    assert swapped.status_code == 200 and "Vote saved." in swapped.content.decode()
    assert "<html" not in swapped.content.decode()  # the htmx partial only
    vote = ArenaVote.objects.get(pair=pair, voter=site["lab_user"])
    assert vote.ranking.time_spent_ms == 2500
    assert PairwiseComparison.objects.filter(ranking=vote.ranking, rejected_id=data["left"]).count() == 1
    again = site["lab"].post(url, data)  # double submit without htmx: same vote, redirect to the next pair
    assert again.status_code == 302 and ArenaVote.objects.count() == 1
    pair2, data2 = _form(site)
    bad = site["lab"].post(url, {**data2, "choice": "model_a"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 400 and "choice must be one of" in bad.content.decode()
    wrong_side = site["lab"].post(url, {**data2, "left": str(pair2.sample_a_id + pair2.sample_b_id - data2["left"])})
    assert wrong_side.status_code == 400 and "shown on the left" in wrong_side.content.decode()
    assert site["stranger"].post(url, data2).status_code == 404
    assert ArenaVote.objects.count() == 1 and Ranking.objects.filter(prompt=pair2.prompt).count() == 0


def test_researchers_create_and_close_arenas_in_the_browser(site):
    model_a, model_b = site["models"]
    lines = "\n".join(json.dumps({"prompt": f"P{i}", "response_a": f"a{i}", "response_b": f"b{i}"}) for i in range(2))
    upload = SimpleUploadedFile("arena.jsonl", lines.encode())
    data = {"name": "second", "model_a": model_a.pk, "model_b": model_b.pk, "file": upload}
    assert site["lab"].post("/p/ar/arena/create/", data).status_code == 403
    upload.seek(0)
    assert site["res"].post("/p/ar/arena/create/", data).status_code == 302
    arena = Arena.objects.get(name="second")
    assert arena.status == Arena.Status.OPEN and arena.pairs.count() == 2
    bad = SimpleUploadedFile("bad.jsonl", b'{"prompt": "x", "response_a": "a"}\n')
    page = site["res"].post("/p/ar/arena/create/", {**data, "name": "bad", "file": bad}, follow=True)
    assert page.status_code == 400
    assert "No arena created" in page.content.decode() and "response_b" in page.content.decode()
    assert not Arena.objects.filter(name="bad").exists()
    waiting = site["res"].post("/p/ar/arena/create/", {"name": "gen", "model_a": model_a.pk, "model_b": model_b.pk,
                                                        "prompts": "one\ntwo\n"}, follow=True)
    assert "a worker is generating" in waiting.content.decode()  # queued on the gpu queue (annotation.tasks)
    assert Arena.objects.get(name="gen").status == Arena.Status.GENERATING
    assert site["lab"].post(f"/p/ar/arena/{arena.pk}/close/").status_code == 403
    site["res"].post(f"/p/ar/arena/{arena.pk}/close/")
    assert Arena.objects.get(pk=arena.pk).status == Arena.Status.CLOSED


def test_api_list_next_vote_and_leaderboard(site):
    arena, lab, res = site["arena"], site["lab"], site["res"]
    listed = lab.get("/api/projects/ar/arenas/").json()
    assert listed[0]["id"] == arena.pk and "name" not in listed[0] and "secret" not in json.dumps(listed)
    assert "model_a" in res.get("/api/projects/ar/arenas/").json()[0]
    assert site["stranger"].get("/api/projects/ar/arenas/").status_code == 404
    nxt = lab.get(f"/api/projects/ar/arenas/{arena.pk}/next/").json()
    assert set(nxt) == {"pair", "messages", "left", "right"} and "secret" not in json.dumps(nxt)
    body = {"pair": nxt["pair"], "left": nxt["left"]["sample_id"], "choice": "left", "time_spent_ms": 10}
    url = f"/api/projects/ar/arenas/{arena.pk}/votes/"
    first = lab.post(url, body, content_type="application/json")
    assert first.status_code == 201 and first.json()["pairs_written"] == 1
    assert lab.post(url, body, content_type="application/json").status_code == 200  # idempotent
    bad = lab.post(url, {**body, "left": nxt["right"]["sample_id"]}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["location"] == "left"
    assert lab.post(url, {**body, "choice": "up"}, content_type="application/json").json()["location"] == "choice"
    assert ArenaVote.objects.count() == 1
    board = res.get("/api/projects/ar/arena/leaderboard/?resamples=30&seed=1").json()
    assert board["votes"] == 1 and board["resamples"] == 30 and len(board["rows"]) == 2
    assert lab.get("/api/projects/ar/arena/leaderboard/").status_code == 403
    assert res.get("/api/projects/ar/arena/leaderboard/?resamples=x").json()["location"] == "resamples"
    model_a, model_b = site["models"]
    create = {"name": "api", "model_a": model_a.pk, "model_b": model_b.pk,
              "items": [{"prompt": "p", "response_a": "x", "response_b": "y"}]}
    assert lab.post("/api/projects/ar/arenas/", create, content_type="application/json").status_code == 403
    made = res.post("/api/projects/ar/arenas/", create, content_type="application/json")
    assert made.status_code == 201 and made.json()["status"] == "open"
    same = res.post("/api/projects/ar/arenas/", {**create, "model_b": model_a.pk}, content_type="application/json")
    assert same.status_code == 400 and same.json()["location"] == "model_b"


def test_command_create_list_and_leaderboard(site, tmp_path):
    model_a, model_b = site["models"]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"p{i}", "response_a": f"x{i}", "response_b": f"y{i}"})
                              for i in range(2)))
    out = io.StringIO()
    call_command("arena", "create", "--project", "ar", "--model-a", str(model_a.pk), "--model-b", str(model_b.pk),
                 "--name", "cli", "--file", str(path), stdout=out)
    assert "2 prompts, open" in out.getvalue()
    out = io.StringIO()
    call_command("arena", "list", "--project", "ar", stdout=out)
    assert "'cli'" in out.getvalue() and NAMES[0] in out.getvalue()
    pair, data = _form(site)
    site["lab"].post(f"/p/ar/arena/{site['arena'].pk}/vote/", data)
    out = io.StringIO()
    call_command("arena", "leaderboard", "--project", "ar", "--resamples", "20", stdout=out)
    assert "1 votes, 20 bootstrap resamples" in out.getvalue() and NAMES[0] in out.getvalue()
    out = io.StringIO()
    call_command("arena", "leaderboard", "--project", "ar", "--json", stdout=out)
    assert json.loads(out.getvalue())["votes"] == 1


@pytest.mark.parametrize("extra_arenas", [0, 4])
def test_the_arena_list_reads_a_fixed_number_of_queries_whatever_the_number_of_arenas(
        site, extra_arenas, django_assert_max_num_queries):
    model_a, model_b = site["models"]
    researcher = site["arena"].created_by
    for i in range(extra_arenas):
        arena_create(project=site["project"], model_a=model_a, model_b=model_b, name=f"more {i}", user=researcher,
                     items=[{"prompt": "Q", "response_a": "A", "response_b": "B"}])
    pair, voter = site["arena"].pairs.first(), site["lab_user"]
    arena_vote(pair_id=pair.pk, voter=voter, choice="left",
               left_sample_id=arena_shown_order(pair=pair, voter=voter)[0])
    with django_assert_max_num_queries(ARENA_LIST_QUERIES):  # no count query per arena
        rows = site["res"].get("/api/projects/ar/arenas/").json()
        page = site["lab"].get("/p/ar/arena/")
    assert len(rows) == 1 + extra_arenas and page.status_code == 200
    first = next(r for r in rows if r["id"] == site["arena"].pk)
    assert (first["pairs"], first["my_votes"], first["votes"]) == (3, 0, 1)
    mine = next(a for a in page.context["arenas"] if a["arena"].pk == site["arena"].pk)
    assert (mine["total"], mine["done"], mine["left"], mine["votes"]) == (3, 1, 2, 1)
