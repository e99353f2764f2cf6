"""Pages: login, membership (404) and role (403) checks, htmx partials, submit → pairs, errors write nothing."""
import hashlib
import io
import json
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Assignment, PairwiseComparison, Prompt, Ranking, Round, Sample

HTMX = {"HTTP_HX_REQUEST": "true"}


class _Elements(HTMLParser):
    """What a browser builds from a page: element names, attributes, script sources and inline scripts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags, self.attrs, self.script_srcs, self.inline_scripts = set(), [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)
        if tag == "script":
            found = dict(attrs)
            if "src" in found:
                self.script_srcs.append(found["src"])
            else:
                self.inline_scripts.append(found.get("type", "text/javascript"))


@pytest.fixture
def team(make_user, make_project):
    labeler, other, researcher = make_user("lab"), make_user("other"), make_user("res")
    project = make_project(slug="alpha", k=4, overlap=1, prompts=3, labelers=[labeler, other], researchers=[researcher])
    secret = make_project(slug="secret", k=2, prompts=1, labelers=[other])
    return {"labeler": labeler, "other": other, "researcher": researcher, "project": project, "secret": secret}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def lease(client: Client, slug: str = "alpha") -> Assignment:
    response = client.get(reverse("annotation:label", args=[slug]))
    assert response.status_code == 200
    return response.context["assignment"]


def next_lease_in(response, labeler) -> Assignment:
    """The labeler's new active lease, checked to be the one the (partial) page shows."""
    current = Assignment.objects.get(labeler=labeler, status=Assignment.Status.ACTIVE)
    assert reverse("annotation:submit", args=[current.pk]) in response.content.decode()
    return current


def rank_fields(assignment: Assignment, ranks: list[int]) -> dict:
    return {f"rank_{sample_id}": str(rank) for sample_id, rank in zip(assignment.shown_order, ranks)}


@pytest.mark.parametrize("name,args", [("annotation:home", []), ("annotation:project", ["alpha"]),
                                       ("annotation:label", ["alpha"])])
def test_pages_require_login(team, client, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_login_page_renders_and_logout_is_a_post_form(team, client):
    assert client.get(reverse("login")).status_code == 200
    page = client_for(team["labeler"]).get(reverse("annotation:home")).content.decode()
    assert f'<form method="post" action="{reverse("logout")}"' in page


def test_home_lists_only_my_projects_and_has_a_partial(team):
    client = client_for(team["labeler"])
    page = client.get(reverse("annotation:home")).content.decode()
    assert "Alpha" in page and "Secret" not in page
    partial = client.get(reverse("annotation:home"), **HTMX).content.decode()
    assert 'id="project-list"' in partial and "<html" not in partial


def test_non_members_get_404_everywhere(team):
    client = client_for(team["labeler"])
    for name in ("annotation:project", "annotation:label", "annotation:export"):
        assert client.get(reverse(name, args=["secret"])).status_code == 404
    assert client.post(reverse("annotation:import", args=["secret"])).status_code == 404
    other_assignment = lease(client_for(team["other"]), "secret")
    for name in ("annotation:submit", "annotation:skip"):
        assert client.post(reverse(name, args=[other_assignment.pk]), {"reason": "other", "detail": "x"}).status_code == 404
    assert Assignment.objects.get(pk=other_assignment.pk).status == Assignment.Status.ACTIVE


def test_labelers_get_403_on_researcher_actions(team):
    client = client_for(team["labeler"])
    page = client.get(reverse("annotation:project", args=["alpha"])).content.decode()
    assert "Import samples" not in page and "Export preferences" not in page
    assert client.get(reverse("annotation:export", args=["alpha"]), {"format": "pairs"}).status_code == 403
    upload = io.BytesIO(b'{"prompt": "p", "responses": ["a", "b"]}\n')
    upload.name = "x.jsonl"
    assert client.post(reverse("annotation:import", args=["alpha"]), {"file": upload}).status_code == 403
    assert Round.objects.filter(project=team["project"]).count() == 1


def test_label_page_full_and_htmx_partial(team):
    client = client_for(team["labeler"])
    full = client.get(reverse("annotation:label", args=["alpha"]))
    assignment = full.context["assignment"]
    page = full.content.decode()
    assert "<html" in page and 'id="label-area"' in page and 'id="board-data"' in page
    positions = [page.index(f'id="response-{sample_id}"') for sample_id in assignment.shown_order]
    assert positions == sorted(positions), "responses appear in the assignment's shown order"
    partial = client.get(reverse("annotation:label", args=["alpha"]), **HTMX).content.decode()
    assert partial.lstrip().startswith('<div id="label-area"') and "<html" not in partial
    assert "Question" in partial and "hx-disable" in partial


def test_submit_rank_fields_writes_ranking_and_pairs_then_redirects(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    data = rank_fields(assignment, [1, 2, 3, 4]) | {"time_spent_ms": "4200",
                                                     f"flag_{assignment.shown_order[3]}": ["off_topic"]}
    response = client.post(reverse("annotation:submit", args=[assignment.pk]), data)
    assert response.status_code == 302 and response["Location"] == reverse("annotation:label", args=["alpha"])
    ranking = Ranking.objects.get(assignment=assignment)
    assert ranking.labeler == team["labeler"] and ranking.time_spent_ms == 4200
    assert PairwiseComparison.objects.filter(ranking=ranking).count() == 6
    best = PairwiseComparison.objects.get(ranking=ranking, chosen_id=assignment.shown_order[0],
                                          rejected_id=assignment.shown_order[3])
    assert best.margin == 3
    assert ranking.entries.get(sample_id=assignment.shown_order[3]).flags == ["off_topic"]


def test_htmx_submit_with_tiers_json_and_a_tie_loads_the_next_assignment(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    a, b, c, d = assignment.shown_order
    tiers = json.dumps([[a, b], [c], [d]])
    response = client.post(reverse("annotation:submit", args=[assignment.pk]), {"tiers": tiers}, **HTMX)
    assert response.status_code == 200
    assert next_lease_in(response, team["labeler"]).pk != assignment.pk
    assert "Ranking saved." in response.content.decode()
    assert PairwiseComparison.objects.filter(ranking__assignment=assignment).count() == 5  # C(4,2) - 1 tie
    # A double submit (retry) is idempotent: same ranking, no new pairs.
    again = client.post(reverse("annotation:submit", args=[assignment.pk]), {"tiers": tiers}, **HTMX)
    assert again.status_code == 200 and Ranking.objects.filter(assignment=assignment).count() == 1
    assert PairwiseComparison.objects.filter(ranking__assignment=assignment).count() == 5


@pytest.mark.parametrize("bad", [
    {"tiers": "not json"},
    {"tiers": "[[1, 2]]"},
    "missing-one",
    "foreign-sample",
])
def test_invalid_ranking_is_400_with_a_message_and_writes_nothing(team, db_counts, bad):
    client = client_for(team["labeler"])
    assignment = lease(client)
    if bad == "missing-one":
        bad = rank_fields(assignment, [1, 2, 3, 4]) | {f"rank_{assignment.shown_order[2]}": ""}
    elif bad == "foreign-sample":
        foreign = Sample.objects.exclude(prompt=assignment.prompt).first()
        bad = {"tiers": json.dumps([[*assignment.shown_order[:3], foreign.pk]])}
    before = db_counts()
    response = client.post(reverse("annotation:submit", args=[assignment.pk]), bad, **HTMX)
    assert response.status_code == 400
    assert response["HX-Retarget"] == "#form-error"
    assert 'class="error"' in response.content.decode()
    assert db_counts() == before
    plain = client.post(reverse("annotation:submit", args=[assignment.pk]), bad)
    assert plain.status_code == 400 and plain.context["assignment"].pk == assignment.pk
    assert db_counts() == before


def test_skip_needs_a_reason_then_frees_the_prompt(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    empty = client.post(reverse("annotation:skip", args=[assignment.pk]), {"reason": "", "detail": ""}, **HTMX)
    assert empty.status_code == 400
    assert empty["HX-Retarget"] == "#skip-error"  # the message goes in the skip panel
    body = empty.content.decode()
    assert 'id="notice-slot" class="notice-slot" hx-swap-oob="true"><p class="error">' in body  # and replaces the notice
    assert "Give a reason for skipping" in body
    assert Assignment.objects.get(pk=assignment.pk).status == Assignment.Status.ACTIVE
    done = client.post(reverse("annotation:skip", args=[assignment.pk]),
                       {"reason": "other", "detail": "<script>alert(1)</script>"}, **HTMX)
    assert done.status_code == 200 and "Prompt skipped." in done.content.decode()
    skipped = Assignment.objects.get(pk=assignment.pk)
    assert skipped.status == Assignment.Status.SKIPPED and "<script>" in skipped.skip_reason
    assert next_lease_in(done, team["labeler"]).prompt_id != assignment.prompt_id


def test_researcher_imports_and_exports(team, db_counts):
    client = client_for(team["researcher"])
    page = client.get(reverse("annotation:project", args=["alpha"])).content.decode()
    assert "Import samples" in page and "Export preferences" in page
    bad = io.BytesIO(b'{"prompt": "p", "responses": ["only one"]}\n')
    bad.name = "bad.jsonl"
    response = client.post(reverse("annotation:import", args=["alpha"]), {"file": bad})
    assert response.status_code == 400 and "line 1" in response.content.decode()
    assert Prompt.objects.filter(project=team["project"]).count() == 3
    good = io.BytesIO(b'{"prompt": "New?", "responses": ["a", "b", "c", "d"]}\n')
    good.name = "good.jsonl"
    response = client.post(reverse("annotation:import", args=["alpha"]), {"file": good}, follow=True)
    assert response.status_code == 200 and "Imported good.jsonl into round 2" in response.content.decode()
    assert Prompt.objects.filter(project=team["project"]).count() == 4

    labeler = client_for(team["labeler"])
    assignment = lease(labeler)
    labeler.post(reverse("annotation:submit", args=[assignment.pk]), rank_fields(assignment, [1, 2, 2, 3]))
    export = client.get(reverse("annotation:export", args=["alpha"]), {"format": "pairs", "file_format": "jsonl"})
    assert export.status_code == 200 and export["Content-Disposition"].endswith('alpha-pairs.jsonl"')
    rows = [json.loads(line) for line in b"".join(export.streaming_content).splitlines()]
    assert len(rows) == 5 and {"prompt", "chosen", "rejected", "tier_distance"} <= set(rows[0])
    wrong = client.get(reverse("annotation:export", args=["alpha"]), {"format": "nope"})
    assert wrong.status_code == 400


def test_untrusted_text_is_escaped_on_the_label_page(team, make_user, make_project):
    user = make_user("victim")
    project = make_project(slug="xss", k=2, prompts=0, labelers=[user])
    project.guidelines = '<img src=x onerror="alert(1)"> [x](javascript:alert(1))'
    project.save()
    prompt = Prompt.objects.create(project=project, round=project.rounds.get(), messages=[
        {"role": "user", "content": '</script><script>alert(1)</script><div hx-get="/x" hx-trigger="load">q</div>'}])
    for position, text in enumerate(["<script>alert(2)</script>", '</script><img src=x onerror=alert(3)>']):
        Sample.objects.create(prompt=prompt, text=text, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                              position=position)
    page = client_for(user).get(reverse("annotation:label", args=["xss"])).content.decode()
    elements = _Elements(page)
    assert "img" not in elements.tags
    assert all(src.startswith("/static/") for src in elements.script_srcs)
    assert elements.inline_scripts == ["application/json"], "only the json_script block, no inline code"
    assert not [a for a in elements.attrs if a[0].startswith("on") or a[1].lower().startswith("javascript:")]
    assert ("hx-get", "/x") not in elements.attrs
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # shown as text
    board = page.split('<script id="board-data" type="application/json">')[1].split("</script>")[0]
    assert "</script" not in board.lower() and "<" not in board  # json_script escapes <, > and &
    assert json.loads(board)["k"] == 2


def test_csrf_is_enforced_on_posts(team):
    client = Client(enforce_csrf_checks=True)
    client.force_login(team["labeler"])
    assignment = lease(client)
    response = client.post(reverse("annotation:submit", args=[assignment.pk]), rank_fields(assignment, [1, 2, 3, 4]))
    assert response.status_code == 403 and not Ranking.objects.exists()
    page = client.get(reverse("annotation:label", args=["alpha"])).content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
