"""The policy side's Django layer without training: policy data import, start_round permissions and
validation (views and API), generation checks, the over-optimisation flag on constructed numbers."""
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation.errors import InvalidInput
from annotation.models import Prompt, Round
from training.models import Demonstration, ModelArtifact, PoolPrompt, RoundReport, TrainingRun
from training.policy_data import policy_data_import
from training.rounds import flags_update, round_report_record, round_start

pytestmark = pytest.mark.django_db

LINES = [
    json.dumps({"prompt": "Continue the story about the river.", "response": "the warm river glowed."}),
    json.dumps({"messages": [{"role": "user", "content": "Continue the story about the hill."}]}),
]


@pytest.fixture
def loop_project(ranked, stored_model, artifact_root):
    project, researcher, labeler = ranked
    policy_data_import(project=project, lines=LINES)
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    return project, researcher, labeler, policy


def test_policy_data_import_validates_first_and_is_idempotent(ranked):
    project = ranked[0]
    assert policy_data_import(project=project, lines=LINES) == {"lines": 2, "demonstrations": 1, "pool_prompts": 2}
    assert policy_data_import(project=project, lines=LINES)["pool_prompts"] == 0
    bad = LINES + [json.dumps({"messages": [{"role": "robot", "content": "x"}], "response": "y"})]
    with pytest.raises(InvalidInput, match=r"line 3\.messages\[0\]\.role"):
        policy_data_import(project=project, lines=[b"{}"] + bad[1:])
    assert Demonstration.objects.count() == 1 and PoolPrompt.objects.count() == 2


def test_round_start_creates_a_generating_round_and_a_queued_generation_run(loop_project, sent,
                                                                           django_capture_on_commit_callbacks):
    project, researcher, _, policy = loop_project
    with django_capture_on_commit_callbacks(execute=True):
        run = round_start(project=project, policy_artifact=policy, sampling={"temperature": 0.7, "max_new_tokens": 16},
                          prompts=["Hello?", [{"role": "user", "content": "Hi"}]], user=researcher)
    assert run.kind == "generate" and run.status == "queued" and sent == [run.pk]
    assert run.round.status == Round.Status.GENERATING and run.round.number == 2
    assert run.round.prompts.count() == 2 and run.config["k"] == project.k and run.config["temperature"] == 0.7
    assert run.round.sampling_params["max_new_tokens"] == 16 and run.snapshot is None
    assert RoundReport.objects.get(round=run.round).policy == policy


def test_round_start_rejects_bad_input_and_writes_nothing(loop_project, sent):
    project, researcher, labeler, policy = loop_project
    for prompts, sampling, where in [([], {}, "prompts"), (["ok"], {"k": 3}, "sampling.k"),
                                     (["ok"], {"temperature": -1}, "config.temperature"),
                                     (["ok"], {"bogus": 1}, "sampling.bogus"), ([[{"role": "x"}]], {}, "prompts[0]")]:
        with pytest.raises(InvalidInput) as error:
            round_start(project=project, policy_artifact=policy, prompts=prompts, sampling=sampling, user=researcher)
        assert error.value.location.startswith(where)
    assert not TrainingRun.objects.exists() and Round.objects.count() == 1 and sent == []


def _login(client, user):
    client.force_login(user)
    return client


def test_start_round_view_permissions_and_success(loop_project, client, make_user, sent):
    project, researcher, labeler, policy = loop_project
    url = f"/training/projects/{project.slug}/lineage/start-round/"
    form = {"policy": policy.pk, "sample": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}
    assert _login(client, make_user("stranger")).post(url, form).status_code == 404
    assert client.get(f"/training/projects/{project.slug}/lineage/").status_code == 404
    assert _login(client, labeler).post(url, form).status_code == 403
    assert client.get(f"/training/projects/{project.slug}/lineage/").status_code == 403  # labelers see no training
    assert not TrainingRun.objects.exists()
    _login(client, researcher)
    bad = client.post(url, {**form, "sample": "", "prompts_text": ""})
    assert bad.status_code == 400 and not TrainingRun.objects.exists()
    response = client.post(url, {**form, "sample": "", "prompts_text": "First <b>prompt</b>\nSecond prompt"})
    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert list(run.round.prompts.values_list("messages", flat=True))[0][0]["content"] == "First <b>prompt</b>"
    page = client.get(f"/training/projects/{project.slug}/lineage/").content.decode()
    assert f"generation run #{run.pk}" in page and "<b>prompt" not in page


def test_start_round_api_permissions_and_success(loop_project, client, make_user, sent):
    project, researcher, labeler, policy = loop_project
    url = f"/api/projects/{project.slug}/rounds/"
    body = {"policy": policy.pk, "sample": 3, "sampling": {"seed": 1}}
    assert _login(client, make_user("stranger")).post(url, body, content_type="application/json").status_code == 404
    assert _login(client, labeler).post(url, body, content_type="application/json").status_code == 403
    _login(client, researcher)
    bad = client.post(url, {**body, "sampling": {"k": 2}}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["location"] == "sampling.k"
    assert not TrainingRun.objects.exists()
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 201 and response.json()["kind"] == "generate"
    assert Prompt.objects.filter(round__number=2).count() == 3
    lineage = client.get(f"/api/projects/{project.slug}/lineage/").json()
    assert [r["round"] for r in lineage] == [1, 2] and lineage[1]["policy"] == policy.pk


def test_generation_and_policy_runs_are_validated_up_front(loop_project, sent):
    from training.services import run_create

    project, _, _, policy = loop_project
    with pytest.raises(InvalidInput, match="round_start"):
        run_create(project=project, kind="generate", config={}, base_artifact=policy)
    with pytest.raises(InvalidInput) as error:
        run_create(project=project, kind="ppo", config={}, base_artifact=policy)
    assert error.value.location == "config.reward_model"
    with pytest.raises(InvalidInput) as error:
        run_create(project=project, kind="grpo", config={"reward_fn": "nope.module:f"}, base_artifact=policy)
    assert error.value.location == "config.reward_fn"
    run = run_create(project=project, kind="grpo", config={"reward_fn": "demo"},
                     base_artifact=policy)
    # stored relative to the artifact root (the row here names it by absolute path, as rows before issue #14 did)
    assert run.snapshot is None and run.config["base_model"] == "$RLHF_ARTIFACT_ROOT/base/fixture/model"
    dpo = run_create(project=project, kind="dpo", config={}, base_artifact=policy)
    assert dpo.snapshot.num_pairs == 36 and dpo.round.number == 1


def test_round_reports_flag_the_round_and_the_run_that_trained_its_policy(loop_project, sent):
    project, _, _, policy = loop_project
    first = round_start(project=project, policy_artifact=policy, prompts=["a"]).round
    TrainingRun.objects.filter(round=first).update(status="succeeded")  # generated: the next round may start
    trainer = TrainingRun.objects.create(project=project, kind="ppo", status="succeeded", base_artifact=policy,
                                         summary={"first": {"rm_score": 0.1}, "final": {"rm_score": 0.8}})
    tuned = ModelArtifact.objects.create(project=project, kind="policy", name="p1", path=policy.path, run=trainer,
                                         parent=policy)
    second = round_start(project=project, policy_artifact=tuned, prompts=["b"]).round
    round_report_record(round=first, metrics={"utility_mean": 0.6, "utility_se": 0.02})
    report = round_report_record(round=second, metrics={"utility_mean": 0.3, "utility_se": 0.02})
    trainer.refresh_from_db()
    assert report.overoptimised and trainer.overoptimised and "rose by 0.700" in trainer.flag_reason
    report = round_report_record(round=second, metrics={"utility_mean": 0.7})  # the labelers' measure recovers
    trainer.refresh_from_db()
    assert not report.overoptimised and not trainer.overoptimised
    round_report_record(round=second, metrics={"utility_mean": 0.3, "rm_score_mean": 0.5, "rm_score_prev_round": 0.6})
    trainer.summary = {}
    trainer.save()
    flags_update(report=RoundReport.objects.get(round=second))
    report = RoundReport.objects.get(round=second)  # RM score fell too: no over-optimisation, but the labelers'
    assert report.flag_reason.startswith("labelers' utility fell by 0.300")  # fall is flagged (issue 12)
    assert "reward-model score" not in report.flag_reason


def test_policy_data_view_imports_for_researchers_only(loop_project, client):
    project, researcher, labeler, _ = loop_project
    url = f"/training/projects/{project.slug}/lineage/import/"
    upload = lambda: SimpleUploadedFile("d.jsonl", ("\n".join(LINES) + "\n" + json.dumps(  # noqa: E731
        {"prompt": "New one", "response": "ok"})).encode())
    assert _login(client, labeler).post(url, {"file": upload()}).status_code == 403
    assert _login(client, researcher).post(url, {"file": upload()}).status_code == 302
    assert project.demonstrations.count() == 2
    bad = client.post(url, {"file": SimpleUploadedFile("d.jsonl", b'{"response": "x"}')})
    assert bad.status_code == 400 and "line 1" in bad.content.decode()
