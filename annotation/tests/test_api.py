"""JSON API: membership (404) and role (403) checks, submit → pairs, 400 {error, location}, schema."""
import io
import json

import pytest
from rest_framework.test import APIClient

from annotation.models import Assignment, PairwiseComparison, Prompt, Ranking


@pytest.fixture
def team(make_user, make_project):
    labeler, other, researcher = make_user("lab"), make_user("other"), make_user("res")
    project = make_project(slug="alpha", k=3, overlap=2, prompts=3, labelers=[labeler, other], researchers=[researcher])
    make_project(slug="secret", k=2, prompts=1, labelers=[other])
    return {"labeler": labeler, "other": other, "researcher": researcher, "project": project}


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def next_assignment(client: APIClient, slug: str = "alpha") -> dict:
    response = client.post(f"/api/projects/{slug}/assignments/next/")
    assert response.status_code == 200, response.content
    return response.json()


def test_anonymous_is_rejected(team):
    assert APIClient().get("/api/projects/").status_code == 403


def test_project_list_and_detail_only_for_members(team):
    client = api_for(team["labeler"])
    assert [p["slug"] for p in client.get("/api/projects/").json()] == ["alpha"]
    detail = client.get("/api/projects/alpha/").json()
    assert detail["role"] == "labeler" and detail["can_manage"] is False and detail["progress"]["slots_total"] == 6
    assert client.get("/api/projects/secret/").status_code == 404
    assert client.post("/api/projects/secret/assignments/next/").status_code == 404


def test_next_submit_and_rankings_roundtrip(team):
    client = api_for(team["labeler"])
    assignment = next_assignment(client)
    assert [s["id"] for s in assignment["samples"]] == assignment["shown_order"]
    assert assignment["messages"][0]["role"] == "user"
    a, b, c = assignment["shown_order"]
    body = {"tiers": [[a], [b, c]], "flags": {str(c): ["unsafe"]}, "time_spent_ms": 1500, "comment": "close call",
            "all_bad": True}
    response = client.post(f"/api/assignments/{assignment['id']}/ranking/", body, format="json")
    assert response.status_code == 200, response.content
    ranking = response.json()
    assert (ranking["comment"], ranking["all_bad"]) == ("close call", True)
    assert ranking["tiers"] == [[a], sorted([b, c], key=assignment["shown_order"].index)]
    assert ranking["pair_count"] == 2 and ranking["flags"] == {str(c): ["unsafe"]}
    assert PairwiseComparison.objects.filter(ranking_id=ranking["id"]).count() == 2
    again = client.post(f"/api/assignments/{assignment['id']}/ranking/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == ranking["id"]
    assert Ranking.objects.count() == 1
    listed = client.get("/api/projects/alpha/rankings/").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == ranking["id"]


def test_rankings_list_shows_labelers_only_their_own_and_ignores_filters(team):
    mine, theirs = api_for(team["labeler"]), api_for(team["other"])
    for client in (mine, theirs):
        assignment = next_assignment(client)
        client.post(f"/api/assignments/{assignment['id']}/ranking/",
                    {"tiers": [[i] for i in assignment["shown_order"]]}, format="json")
    listed = mine.get("/api/projects/alpha/rankings/", {"labeler__username": "other",
                                                        "labeler__password__startswith": "m"}).json()
    assert listed["count"] == 1 and listed["results"][0]["labeler"] == "lab"
    assert api_for(team["researcher"]).get("/api/projects/alpha/rankings/").json()["count"] == 2
    assert mine.get("/api/projects/secret/rankings/").status_code == 404


@pytest.mark.parametrize("body,location", [
    ({"tiers": []}, "tiers"),
    ({"tiers": [["x"]]}, "tiers[0][0]"),
    ({"tiers": [[1]], "labeler": 5}, "labeler"),
    ({"tiers": [[1]], "project": "secret"}, "project"),
    ("missing", "tiers"),
    ("foreign", "tiers[1][0]"),
    ({"tiers": "SAMPLES", "flags": {"SAMPLE": ["nonsense"]}}, "flags[0]"),
    ({"tiers": "SAMPLES", "time_spent_ms": -5}, "time_spent_ms"),
])
def test_invalid_submit_is_400_with_error_and_location_and_writes_nothing(team, db_counts, body, location):
    client = api_for(team["labeler"])
    assignment = next_assignment(client)
    order = assignment["shown_order"]
    if body == "missing":
        body = {"tiers": [[order[0]], [order[1]]]}
    elif body == "foreign":
        foreign = Prompt.objects.exclude(pk=assignment["prompt_id"]).first().samples.first().pk
        body = {"tiers": [[order[0]], [foreign]]}
    elif body.get("tiers") == "SAMPLES":
        body = {**body, "tiers": [[i] for i in order]}
        if "flags" in body:
            body["flags"] = {str(order[0]): ["nonsense"]}
    before = db_counts()
    response = client.post(f"/api/assignments/{assignment['id']}/ranking/", body, format="json")
    assert response.status_code == 400, response.content
    payload = response.json()
    assert set(payload) == {"error", "location"} and payload["error"]
    assert payload["location"].startswith(location.split("[")[0])
    assert db_counts() == before


def test_someone_elses_assignment_is_404(team, db_counts):
    theirs = next_assignment(api_for(team["other"]))
    client = api_for(team["labeler"])
    before = db_counts()
    body = {"tiers": [[i] for i in theirs["shown_order"]]}
    assert client.post(f"/api/assignments/{theirs['id']}/ranking/", body, format="json").status_code == 404
    assert client.post(f"/api/assignments/{theirs['id']}/skip/", {"reason": "x"}, format="json").status_code == 404
    assert db_counts() == before and Assignment.objects.get(pk=theirs["id"]).status == "active"


def test_skip(team):
    client = api_for(team["labeler"])
    assignment = next_assignment(client)
    assert client.post(f"/api/assignments/{assignment['id']}/skip/", {}, format="json").status_code == 400
    response = client.post(f"/api/assignments/{assignment['id']}/skip/", {"reason": "cannot judge"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "skipped"


def test_import_and_export_are_for_researchers_only(team):
    labeler, researcher = api_for(team["labeler"]), api_for(team["researcher"])
    line = b'{"prompt": "New?", "responses": ["a", "b", "c"]}\n'
    assert labeler.post("/api/projects/alpha/import/", {"file": io.BytesIO(line)}, format="multipart").status_code == 403
    assert labeler.get("/api/projects/alpha/export/?format=pairs").status_code == 403
    assert api_for(team["other"]).post("/api/projects/secret/import/", {}, format="multipart").status_code == 403
    assert researcher.post("/api/projects/secret/import/", {}, format="multipart").status_code == 404

    bad = researcher.post("/api/projects/alpha/import/", {"file": io.BytesIO(b"{not json\n")}, format="multipart")
    assert bad.status_code == 400 and bad.json()["location"].startswith("line 1")
    upload = io.BytesIO(line)
    upload.name = "new.jsonl"
    created = researcher.post("/api/projects/alpha/import/", {"file": upload}, format="multipart")
    assert created.status_code == 201 and created.json()["prompts"] == 1 and created.json()["round_number"] == 2

    assignment = next_assignment(labeler)
    labeler.post(f"/api/assignments/{assignment['id']}/ranking/",
                 {"tiers": [[i] for i in assignment["shown_order"]]}, format="json")
    export = researcher.get("/api/projects/alpha/export/", {"format": "rankings", "file_format": "jsonl"})
    assert export.status_code == 200 and export["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(x) for x in b"".join(export.streaming_content).splitlines()]
    assert len(rows) == 1
    assert researcher.get("/api/projects/alpha/export/", {"format": "nope"}).json()["location"] == "format"
    assert researcher.get("/api/projects/alpha/export/", {"format": "pairs", "round": 9}).status_code == 400


def test_csrf_is_enforced_for_session_auth(team):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(team["labeler"])
    assert client.post("/api/projects/alpha/assignments/next/").status_code == 403


def test_schema_documents_every_endpoint(team):
    response = api_for(team["labeler"]).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    paths = schema["paths"]
    for path in ["/api/projects/", "/api/projects/{slug}/", "/api/projects/{slug}/assignments/next/",
                 "/api/assignments/{assignment_id}/ranking/", "/api/assignments/{assignment_id}/skip/",
                 "/api/projects/{slug}/import/", "/api/projects/{slug}/export/", "/api/projects/{slug}/rankings/"]:
        assert path in paths, path
    body = paths["/api/assignments/{assignment_id}/ranking/"]["post"]["requestBody"]["content"]["application/json"]
    submit = schema["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(submit["properties"]) == {"tiers", "flags", "time_spent_ms", "comment", "all_bad"}
