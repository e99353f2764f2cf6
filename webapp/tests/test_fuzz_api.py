"""Fuzzing the JSON API from its own OpenAPI schema (schemathesis + hypothesis): no input yields a 5xx.

Every operation of /api/schema/ is called with generated path, query and body values, as a researcher
of a real project (so the handlers past the permission checks run too): once with the generated path
parameters and once with them pointed at real objects. Then hypothesis throws arbitrary JSON at the
write endpoints of a real lease and checks that nothing is written unless the answer is a success.
"""
import base64

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation.models import Assignment, PairwiseComparison, Ranking
from annotation.services import assignment_next_for_labeler
from training.models import ModelArtifact, TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
FUZZ_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _basic(username: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:pw-{username}".encode()).decode()}


@pytest.fixture
def fuzz_world(make_user, make_project):
    researcher = make_user("fuzzer")
    project = make_project(slug="fuzz", k=3, prompts=4, overlap=2, labelers=[researcher])
    project.memberships.update(role="researcher")
    assignment = assignment_next_for_labeler(project=project, labeler=researcher)
    run = TrainingRun.objects.create(project=project, kind=TrainingRun.Kind.REWARD, config={})
    artifact = ModelArtifact.objects.create(project=project, kind=ModelArtifact.Kind.REWARD, name="m", path="none", run=run)
    real = {"slug": "fuzz", "assignment_id": assignment.pk, "run_id": run.pk, "artifact_id": artifact.pk}
    return {"user": researcher, "project": project, "assignment": assignment, "real": real}


@pytest.fixture
def keep_connection():
    """Like Django's test Client: the WSGI handler must not close the test transaction's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_no_input_makes_the_api_fail_with_5xx(fuzz_world, keep_connection):
    """Each schema operation, fuzzed by its own hypothesis run (schemathesis' pytest loader predates pytest 9)."""
    headers = _basic("fuzzer")
    api = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler(), headers=headers)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 14  # every endpoint of annotation.api and training.api
    statuses: list[int] = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @FUZZ_SETTINGS
        def fuzz(case):
            response = case.call(headers=headers)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
            if case.path_parameters:  # the same input against real objects, past the 404s
                case.path_parameters = {k: fuzz_world["real"].get(k, v) for k, v in case.path_parameters.items()}
                response = case.call(headers=headers)
                statuses.append(response.status_code)
                assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])

        fuzz()
    # The fuzzing reached the handlers: successes and validation errors, not only 404s and 403s.
    assert sum(200 <= code < 300 for code in statuses) >= 20, sorted(set(statuses))
    assert sum(code == 400 for code in statuses) >= 20, sorted(set(statuses))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
RANKING_BODY = st.fixed_dictionaries(
    {}, optional={"tiers": JSON | st.lists(st.lists(st.integers(-3, 10**12), max_size=4), max_size=5),
                  "flags": JSON, "time_spent_ms": JSON, "labeler": JSON},
)


@given(body=RANKING_BODY | JSON)
@FUZZ_SETTINGS
def test_arbitrary_json_on_a_real_lease_is_a_clean_4xx(client, fuzz_world, body):
    client.force_login(fuzz_world["user"])
    assignment = fuzz_world["assignment"]
    for url in (f"/api/assignments/{assignment.pk}/ranking/", f"/api/assignments/{assignment.pk}/skip/",
                "/api/projects/fuzz/runs/"):
        before = (Ranking.objects.count(), PairwiseComparison.objects.count(), TrainingRun.objects.count(),
                  Assignment.objects.get(pk=assignment.pk).status)
        response = client.post(url, body, content_type="application/json")
        assert response.status_code < 500, (url, body)
        if response.status_code >= 400:
            after = (Ranking.objects.count(), PairwiseComparison.objects.count(), TrainingRun.objects.count(),
                     Assignment.objects.get(pk=assignment.pk).status)
            assert after == before, (url, body)  # nothing written on rejected input
            assert "error" in response.json() or "detail" in response.json()


@given(raw=st.binary(max_size=300))
@FUZZ_SETTINGS
def test_undecodable_bodies_are_a_clean_4xx(client, fuzz_world, raw):
    client.force_login(fuzz_world["user"])
    assignment = fuzz_world["assignment"]
    for url, content_type in ((f"/api/assignments/{assignment.pk}/ranking/", "application/json"),
                              ("/api/projects/fuzz/import/", "multipart/form-data; boundary=xyz"),
                              ("/api/projects/fuzz/runs/", "application/json")):
        response = client.generic("POST", url, raw, content_type=content_type)
        assert response.status_code < 500, (url, raw)
