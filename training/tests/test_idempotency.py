"""Double submits write once: start-round, launch-run, cancel and arena create/vote, in the browser (a hidden
key drawn when the form is rendered) and the API (``Idempotency-Key``), on PostgreSQL, including two threads
sending the same key at the same moment."""
import re
import threading

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from lab.models import Arena, ArenaVote
from annotation.errors import InvalidInput
from annotation.models import Prompt, Ranking, Round
from training.models import DatasetSnapshot, IdempotencyKey, ModelArtifact, TrainingRun
from training.rounds import round_start

KEY_INPUT = re.compile(r'name="idempotency_key" value="([0-9a-f]{32})"')


def counts() -> dict:
    return {"rounds": Round.objects.count(), "prompts": Prompt.objects.count(), "runs": TrainingRun.objects.count(),
            "snapshots": DatasetSnapshot.objects.count(), "arenas": Arena.objects.count(),
            "votes": ArenaVote.objects.count(), "rankings": Ranking.objects.count(),
            "keys": IdempotencyKey.objects.count()}


@pytest.fixture
def setup(ranked, stored_model, artifact_root):
    project, researcher, labeler = ranked
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    other = ModelArtifact.objects.create(project=project, kind="policy", name="p1", path=str(stored_model))
    researcher_client = Client()
    researcher_client.force_login(researcher)
    return project, researcher, labeler, policy, other, researcher_client


def _form_key(client, url: str) -> str:
    keys = KEY_INPUT.findall(client.get(url).content.decode())
    assert keys and len(set(keys)) == len(keys)  # every rendered form draws its own key
    return keys[0]


# ----------------------------------------------------------------------------- browser forms
@pytest.mark.django_db
def test_start_round_form_submitted_twice_starts_one_round(setup, sent, django_capture_on_commit_callbacks):
    project, _, _, policy, _, client = setup
    key = _form_key(client, reverse("training:project_lineage", args=[project.slug]))
    url = reverse("training:start_round", args=[project.slug])
    form = {"policy": policy.pk, "prompts_text": "One?\nTwo?", "temperature": 1.0, "top_p": 1.0,
            "max_new_tokens": 8, "seed": 0, "idempotency_key": key}
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, form, follow=True)
        before = counts()
        second = client.post(url, form, follow=True)
    assert counts() == before and before["runs"] == 1 and before["rounds"] == 2 and len(sent) == 1
    assert "already submitted" in second.content.decode() and "already submitted" not in first.content.decode()
    changed = client.post(url, {**form, "prompts_text": "Three?"})  # the same key, other data: refused
    assert changed.status_code == 400 and "already used for a different request" in changed.content.decode()
    assert counts() == before


@pytest.mark.django_db
def test_policy_and_reward_run_forms_submitted_twice_launch_one_run(setup, model_dir, sent,
                                                                     django_capture_on_commit_callbacks):
    project, _, _, policy, _, client = setup
    dpo = {"kind": "dpo", "policy": policy.pk, "rounds": "1", "config": '{"beta": 0.1}', "idempotency_key": "k-dpo"}
    url = reverse("training:policy_run", args=[project.slug])
    assert client.post(url, dpo).status_code == 302
    before = counts()
    again = client.post(url, dpo)
    assert again.status_code == 302 and counts() == before and before["runs"] == 1 and before["snapshots"] == 1
    key = _form_key(client, reverse("training:project_runs", args=[project.slug]))
    reward = {"base_model_path": str(model_dir), "epochs": "1", "learning_rate": "0.0001", "batch_size": "4",
              "max_length": "128", "eval_fraction": "0.2", "lora_r": "8", "idempotency_key": key}
    url = reverse("training:project_runs", args=[project.slug])
    with django_capture_on_commit_callbacks(execute=True):
        first, second = client.post(url, reward), client.post(url, reward)
    assert first.status_code == second.status_code == 302 and first["Location"] == second["Location"]
    assert TrainingRun.objects.filter(kind="reward").count() == 1 and len(sent) == 1


@pytest.mark.django_db
def test_a_rejected_submit_keeps_nothing_so_the_same_key_can_be_sent_again(setup, sent):
    project, _, _, policy, _, client = setup
    url = reverse("training:start_round", args=[project.slug])
    form = {"policy": policy.pk, "prompts_text": "One?", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8,
            "seed": 0, "idempotency_key": "retry-me"}
    policy_path = policy.path
    ModelArtifact.objects.filter(pk=policy.pk).update(path="/nonexistent/model")
    assert client.post(url, form).status_code == 400 and counts()["keys"] == 0 and counts()["runs"] == 0
    ModelArtifact.objects.filter(pk=policy.pk).update(path=policy_path)
    assert client.post(url, form).status_code == 302 and counts()["runs"] == 1
    bad_key = client.post(url, {**form, "idempotency_key": "has space"})
    assert bad_key.status_code == 400 and "idempotency_key" in bad_key.content.decode()


@pytest.mark.django_db
def test_cancel_twice_changes_nothing_the_second_time(setup, model_dir, sent):
    from training import services

    project, researcher, _, _, _, client = setup
    running = services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)})
    services.run_claim(run_id=running.pk, worker="w")
    url = reverse("training:run_cancel", args=[running.pk])
    first = client.post(url, follow=True)
    row = TrainingRun.objects.values().get(pk=running.pk)
    second = client.post(url, follow=True)
    assert TrainingRun.objects.values().get(pk=running.pk) == row and row["cancel_requested"]
    assert "already requested" in second.content.decode() and "already" not in first.content.decode()
    api = client.post(f"/api/runs/{running.pk}/cancel/")
    assert api.status_code == 200 and TrainingRun.objects.values().get(pk=running.pk) == row
    queued = services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)})
    client.post(reverse("training:run_cancel", args=[queued.pk]))
    row = TrainingRun.objects.values().get(pk=queued.pk)
    assert row["status"] == "cancelled"
    assert client.post(f"/api/runs/{queued.pk}/cancel/").json()["status"] == "cancelled"
    assert TrainingRun.objects.values().get(pk=queued.pk) == row


# ----------------------------------------------------------------------------- API
@pytest.mark.django_db
def test_api_round_start_with_a_key_answers_the_first_run_again(setup, sent, django_capture_on_commit_callbacks):
    project, _, _, policy, _, client = setup
    url = f"/api/projects/{project.slug}/rounds/"
    body = {"policy": policy.pk, "prompts": ["One?", "Two?"], "sampling": {"seed": 1}}
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "abc-1"})
        before = counts()
        second = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "abc-1"})
    assert (first.status_code, second.status_code) == (201, 200) and second["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == second.json()["id"] and counts() == before and len(sent) == 1
    reused = client.post(url, {**body, "prompts": ["Other?"]}, content_type="application/json",
                         headers={"Idempotency-Key": "abc-1"})
    assert reused.status_code == 422 and reused.json()["location"] == "Idempotency-Key" and counts() == before
    malformed = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "x" * 201})
    assert malformed.status_code == 400 and malformed.json()["location"] == "Idempotency-Key"
    # without a key, a second start while round 2 is still generating is refused: one generating round at a time
    busy = client.post(url, body, content_type="application/json")
    assert busy.status_code == 400 and busy.json()["location"] == "round" and "still generating" in busy.json()["error"]
    assert counts() == before


@pytest.mark.django_db
def test_api_run_create_with_a_key_launches_once(setup, model_dir, sent):
    project, _, labeler, _, _, client = setup
    url = f"/api/projects/{project.slug}/runs/"
    body = {"kind": "reward", "config": {"base_model": str(model_dir)}}
    responses = [client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "run-1"})
                 for _ in range(3)]
    assert [r.status_code for r in responses] == [201, 200, 200] and len({r.json()["id"] for r in responses}) == 1
    assert TrainingRun.objects.count() == DatasetSnapshot.objects.count() == 1
    other_user = Client()
    other_user.force_login(labeler)  # keys are per user; a labeler still may not launch
    assert other_user.post(url, body, content_type="application/json",
                           headers={"Idempotency-Key": "run-1"}).status_code == 403


@pytest.mark.django_db
def test_arena_create_twice_creates_one_arena_and_votes_once(setup):
    project, _, labeler, policy, other, client = setup
    items = [{"prompt": f"Q{i}?", "response_a": f"A{i}", "response_b": f"B{i}"} for i in range(2)]
    body = {"name": "a vs b", "model_a": policy.pk, "model_b": other.pk, "items": items}
    url = f"/api/projects/{project.slug}/arenas/"
    first = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "arena-1"})
    second = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": "arena-1"})
    assert (first.status_code, second.status_code) == (201, 200) and first.json()["id"] == second.json()["id"]
    key = _form_key(client, reverse("lab:arena", args=[project.slug]))
    form = {"name": "by form", "model_a": policy.pk, "model_b": other.pk, "prompts": "Q?", "idempotency_key": key}
    client.post(reverse("lab:arena-create", args=[project.slug]), form)
    page = client.post(reverse("lab:arena-create", args=[project.slug]), form, follow=True).content.decode()
    assert Arena.objects.count() == 2 and "already submitted" in page
    voter = Client()
    voter.force_login(labeler)
    arena = Arena.objects.get(pk=first.json()["id"])
    pair = voter.get(f"/api/projects/{project.slug}/arenas/{arena.pk}/next/").json()
    vote = {"pair": pair["pair"], "left": pair["left"]["sample_id"], "choice": "left"}
    codes = [voter.post(f"/api/projects/{project.slug}/arenas/{arena.pk}/votes/", vote,
                        content_type="application/json").status_code for _ in range(2)]
    assert codes == [201, 200] and ArenaVote.objects.count() == 1 and Ranking.objects.filter(
        prompt__round=arena.round).count() == 1


# ----------------------------------------------------------------------------- concurrent repeats
def _at_once(n: int, send) -> list:
    """Call ``send(i)`` from n threads released together; each thread closes its own database connection."""
    barrier, results = threading.Barrier(n), [None] * n

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = send(i)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture
def slow_writes(monkeypatch):
    """Hold the first writer inside its transaction for a moment, so the second arrives while it is open."""
    import time

    from lab import services as arena
    from training import rounds

    original_round, original_items = rounds.prompts_validate, arena._check_items
    monkeypatch.setattr(rounds, "prompts_validate", lambda prompts: (time.sleep(0.3), original_round(prompts))[1])
    monkeypatch.setattr(arena, "_check_items", lambda items: (time.sleep(0.3), original_items(items))[1])


@pytest.mark.django_db(transaction=True)
def test_two_threads_with_the_same_key_start_one_round_and_create_one_arena(setup, sent, slow_writes):
    assert connection.vendor == "postgresql"
    project, researcher, _, policy, other, _ = setup

    def post(url: str, body: dict, key: str):
        client = Client()
        client.force_login(researcher)
        response = client.post(url, body, content_type="application/json", headers={"Idempotency-Key": key})
        return response.status_code, response.json()["id"]

    round_body = {"policy": policy.pk, "prompts": ["One?", "Two?"]}
    results = _at_once(2, lambda i: post(f"/api/projects/{project.slug}/rounds/", round_body, "same-round"))
    assert sorted(code for code, _ in results) == [200, 201] and len({run for _, run in results}) == 1
    assert TrainingRun.objects.count() == 1 and Round.objects.count() == 2 and sent == [results[0][1]]

    items = [{"prompt": "Q?", "response_a": "A", "response_b": "B"}]
    arena_body = {"name": "race", "model_a": policy.pk, "model_b": other.pk, "items": items}
    results = _at_once(2, lambda i: post(f"/api/projects/{project.slug}/arenas/", arena_body, "same-arena"))
    assert sorted(code for code, _ in results) == [200, 201] and Arena.objects.count() == 1
    assert IdempotencyKey.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_threads_without_a_key_cannot_both_start_a_round(setup, sent):
    project, researcher, _, policy, _, _ = setup

    def start(i: int):
        try:
            return round_start(project=project, policy_artifact=policy, prompts=[f"Q{i}?"], user=researcher).pk
        except InvalidInput as error:
            return error.location

    results = _at_once(2, start)
    assert sorted(map(str, results))[1] == "round" and TrainingRun.objects.count() == 1  # the project row lock


@pytest.mark.django_db(transaction=True)
def test_the_same_vote_from_two_threads_is_stored_once(setup):
    from lab.services import arena_create, arena_vote
    from lab.selectors import arena_shown_order

    project, researcher, labeler, policy, other, _ = setup
    arena = arena_create(project=project, model_a=policy, model_b=other, name="race", user=researcher,
                         items=[{"prompt": "Q?", "response_a": "A", "response_b": "B"}])
    pair = arena.pairs.get()
    left = arena_shown_order(pair=pair, voter=labeler)[0]
    votes = _at_once(2, lambda i: arena_vote(pair_id=pair.pk, voter=labeler, choice="right", left_sample_id=left).pk)
    assert votes[0] == votes[1] and ArenaVote.objects.count() == 1 and Ranking.objects.filter(
        prompt__round=arena.round).count() == 1
