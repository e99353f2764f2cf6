"""Deeply nested JSON and oversized uploads (issue #10, item 6): a clear 400/413, never a 500, nothing written.

Before: ``json.loads`` of a 100,000-deep ``[[[…]]]`` raised RecursionError (500) in DRF's parser, the ranking
form and the gold, policy-data, arena and start-round uploads, and a 50 MB upload was read whole first.
"""
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory

from lab.models import Arena
from annotation.models import Assignment, Ranking, Round
from annotation.quality.models import GoldRanking
from annotation.services import assignment_next_for_labeler
from training.models import Demonstration, ModelArtifact, PoolPrompt, TrainingRun
from webapp.middleware import UploadSizeLimitMiddleware
from webapp.tests.urlmatrix import fill_pattern, site_patterns

pytestmark = pytest.mark.django_db
DEEP = "[" * 100_000 + "]" * 100_000


def _deep_line(depth: int = 100_000) -> bytes:
    return ('{"prompt": ' + "[" * depth + "]" * depth + "}\n").encode()


@pytest.fixture
def site(make_user, make_project, tmp_path):
    labeler, researcher = make_user("lab"), make_user("res")
    project = make_project(slug="alpha", k=3, prompts=2, labelers=[labeler], researchers=[researcher])
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    policies = [ModelArtifact.objects.create(project=project, kind=ModelArtifact.Kind.POLICY, name=f"p{i}",
                                             path=str(tmp_path / f"p{i}")) for i in range(2)]
    clients = {}
    for user in (labeler, researcher):
        clients[user.username] = Client()
        clients[user.username].force_login(user)
    return {"project": project, "lease": lease, "policies": policies, **clients}


def _state(project) -> tuple:
    return (Ranking.objects.count(), sorted(Assignment.objects.values_list("pk", "status")), Round.objects.count(),
            GoldRanking.objects.count(), Demonstration.objects.count(), PoolPrompt.objects.count(),
            Arena.objects.count(), TrainingRun.objects.count())


def test_a_deep_ranking_body_is_a_400_and_writes_nothing(site):
    before = _state(site["project"])
    lease = site["lease"].pk
    api = site["lab"].post(f"/api/assignments/{lease}/ranking/", '{"tiers": ' + DEEP + "}",
                           content_type="application/json")
    assert api.status_code == 400 and "nested deeper than 64 levels" in api.json()["detail"]
    skip = site["lab"].post(f"/api/assignments/{lease}/skip/", DEEP, content_type="application/json")
    assert skip.status_code == 400
    form = site["lab"].post(f"/assignments/{lease}/submit/", {"tiers": "[" * 9000 + "]" * 9000})
    assert form.status_code == 400 and "nested deeper" in form.content.decode()
    assert _state(site["project"]) == before


@pytest.mark.parametrize("who", ["lab", "res"])
def test_no_api_body_gives_a_500(site, who):
    ids = {"slug": "alpha", "assignment_id": site["lease"].pk, "run_id": 1, "artifact_id": site["policies"][0].pk,
           "prompt_id": site["lease"].prompt_id, "arena_id": 1}
    before = _state(site["project"])
    refused = 0
    for pattern in site_patterns():
        if not pattern.startswith("/api/"):
            continue
        response = site[who].post(fill_pattern(pattern, ids), DEEP, content_type="application/json")
        assert response.status_code < 500, (pattern, response.status_code)
        refused += response.status_code == 400
    assert refused >= (2 if who == "lab" else 8)
    after = _state(site["project"])
    assert (after[0], after[2:]) == (before[0], before[2:])  # "assignments/next" leases: it reads no body


def test_deep_json_in_every_upload_is_a_400_and_writes_nothing(site):
    res, policy = site["res"], site["policies"][0]
    before = _state(site["project"])
    uploads = [  # (url, form fields, the file's field name, the file)
        ("/p/alpha/quality/gold/", {}, "file", b'{"prompt_id": 1, "ranking": ' + ("[" * 30_000 + "]" * 30_000).encode()
         + b"}\n"),  # gold lines are at most 64 KiB
        ("/training/projects/alpha/lineage/import/", {}, "file", _deep_line()),
        ("/p/alpha/arena/create/", {"name": "a", "model_a": policy.pk, "model_b": site["policies"][1].pk}, "file",
         _deep_line()),
        ("/training/projects/alpha/lineage/start-round/",
         {"policy": policy.pk, "temperature": 1, "top_p": 1, "max_new_tokens": 8, "seed": 0}, "prompts_file",
         _deep_line()),
        ("/p/alpha/import/", {}, "file", _deep_line()),
    ]
    for url, fields, name, content in uploads:
        response = res.post(url, {**fields, name: SimpleUploadedFile("deep.jsonl", content)})
        assert response.status_code == 400, (url, response.status_code)
        assert "nested" in response.content.decode(), url
    gold = res.post("/p/alpha/quality/gold/", {"file": SimpleUploadedFile("deep.jsonl", _deep_line())})
    assert gold.status_code == 400 and "longer than 65536 bytes" in gold.content.decode()  # 100k deep: 200 KB
    api = res.post("/api/projects/alpha/import/", {"file": SimpleUploadedFile("deep.jsonl", _deep_line())})
    assert api.status_code == 400 and "nested" in api.json()["error"]
    rounds = res.post("/api/projects/alpha/rounds/", '{"policy": 1, "prompts": ' + DEEP + "}",
                      content_type="application/json")
    assert rounds.status_code == 400
    assert _state(site["project"]) == before


def test_an_oversized_upload_is_refused_with_413_and_writes_nothing(site, settings):
    settings.MAX_UPLOAD_BYTES = 10_000
    big = b'{"prompt": "p", "responses": ["a", "b", "c"]}\n' * 400  # ~18 KB
    before = _state(site["project"])
    for url in ("/p/alpha/quality/gold/", "/training/projects/alpha/lineage/import/", "/p/alpha/arena/create/",
                "/training/projects/alpha/lineage/start-round/", "/p/alpha/import/", "/api/projects/alpha/import/"):
        response = site["res"].post(url, {"file": SimpleUploadedFile("big.jsonl", big)})
        assert response.status_code == 413, url
        assert "at most 10000 bytes" in response.content.decode(), url
    assert _state(site["project"]) == before


class _Unreadable(io.RawIOBase):
    def read(self, *args):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the body was read")

    readline = read


def test_an_oversized_body_is_refused_before_any_of_it_is_read(settings):
    settings.MAX_UPLOAD_BYTES = 1000
    request = RequestFactory().post("/p/alpha/import/", data=b"", content_type="multipart/form-data; boundary=x")
    request.META["CONTENT_LENGTH"] = str(50 * 1024 * 1024)
    request.META["wsgi.input"] = _Unreadable()
    middleware = UploadSizeLimitMiddleware(lambda r: pytest.fail("the view ran"))
    response = middleware(request)
    assert response.status_code == 413 and b"52428800 bytes" in response.content


def test_uploads_are_streamed_line_by_line_not_read_whole(site, monkeypatch):
    """The gold and policy-data uploads are read with readline(limit), never read(), readlines() or iteration
    (which joins 64 KiB chunks until a newline: a 50 MB line would be held whole)."""
    from django.core.files.uploadedfile import InMemoryUploadedFile
    from django.test.client import BOUNDARY, encode_multipart

    line = json.dumps({"prompt": "Hello?", "response": "Hi."}).encode() + b"\n"
    gold = json.dumps({"prompt_id": site["lease"].prompt_id, "ranking": [[0], [1], [2]]}).encode()
    bodies = [encode_multipart(BOUNDARY, {"file": SimpleUploadedFile(name, content)})
              for name, content in (("d.jsonl", line), ("g.jsonl", gold))]

    def refuse(self, *args):
        raise AssertionError("the upload was read whole")

    multipart = f"multipart/form-data; boundary={BOUNDARY}"  # not the client's constant: the body is ready
    for method in ("read", "readlines", "__iter__"):
        monkeypatch.setattr(InMemoryUploadedFile, method, refuse, raising=False)
    response = site["res"].post("/training/projects/alpha/lineage/import/", bodies[0], content_type=multipart)
    assert response.status_code == 302 and Demonstration.objects.count() == 1
    response = site["res"].post("/p/alpha/quality/gold/", bodies[1], content_type=multipart)
    assert response.status_code == 302 and GoldRanking.objects.count() == 1


def test_an_oversized_json_body_is_refused_with_413_before_parsing(site, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"tiers": [[1]], "padding": "x" * 5000})
    before = _state(site["project"])
    response = site["lab"].post(f"/api/assignments/{site['lease'].pk}/ranking/", body, content_type="application/json")
    assert response.status_code == 413 and "at most 1000 bytes" in response.json()["error"]
    assert _state(site["project"]) == before
