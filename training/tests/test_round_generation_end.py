"""A generation run that ends without samples (cancelled queued or running, failed, lost) leaves its round
CLOSED and empty, shown as "generation cancelled/failed" on the lineage page; no round opens without samples;
one round generates at a time per project."""
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation.errors import InvalidInput
from annotation.models import Round, Sample
from training import services
from training.models import ModelArtifact, TrainingRun
from training.rounds import round_start

pytestmark = pytest.mark.django_db
Status = TrainingRun.Status


@pytest.fixture
def generating(ranked, stored_model, artifact_root, sent):
    project, researcher, _ = ranked
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    run = round_start(project=project, policy_artifact=policy, prompts=["One?", "Two?"], user=researcher)
    return project, researcher, policy, run


def _lineage(client, user, project) -> str:
    client.force_login(user)
    return client.get(reverse("training:project_lineage", args=[project.slug])).content.decode()


def test_cancelling_a_queued_generation_run_closes_its_empty_round(generating, client):
    project, researcher, policy, run = generating
    with pytest.raises(InvalidInput, match="round 2 is still generating"):
        round_start(project=project, policy_artifact=policy, prompts=["Three?"])
    services.run_request_cancel(run_id=run.pk, user=researcher)
    run.refresh_from_db()
    rnd = Round.objects.get(pk=run.round_id)
    assert run.status == Status.CANCELLED and rnd.status == Round.Status.CLOSED
    assert not Sample.objects.filter(prompt__round=rnd).exists()
    assert "generation cancelled" in _lineage(client, researcher, project)
    assert round_start(project=project, policy_artifact=policy, prompts=["Three?"]).round.number == 3


def test_a_running_generation_run_cancelled_or_failed_closes_its_round(generating, client):
    project, researcher, policy, run = generating
    claimed = services.run_claim(run_id=run.pk, worker="w")
    services.run_request_cancel(run_id=run.pk, user=researcher)
    assert Round.objects.get(pk=run.round_id).status == Round.Status.GENERATING  # stops at its next step
    assert services.run_finish(run_id=run.pk, status=Status.CANCELLED, summary={}, claim_token=claimed.claim_token)
    assert Round.objects.get(pk=run.round_id).status == Round.Status.CLOSED

    second = round_start(project=project, policy_artifact=policy, prompts=["Three?"])
    TrainingRun.objects.filter(pk=second.pk).update(max_attempts=1)
    claimed = services.run_claim(run_id=second.pk, worker="w")
    services.run_retry_or_fail(run_id=second.pk, error="out of memory", claim_token=claimed.claim_token)
    second.refresh_from_db()
    assert second.status == Status.FAILED and second.round.status == Round.Status.CLOSED
    page = _lineage(client, researcher, project)
    assert "generation cancelled" in page and "generation failed" in page


def test_a_retried_generation_run_keeps_its_round_waiting(generating):
    _, _, _, run = generating
    claimed = services.run_claim(run_id=run.pk, worker="w")
    services.run_retry_or_fail(run_id=run.pk, error="transient", claim_token=claimed.claim_token)
    run.refresh_from_db()
    assert run.status == Status.QUEUED and run.round.status == Round.Status.GENERATING


def test_a_lost_worker_out_of_attempts_closes_the_round(generating, settings):
    _, _, _, run = generating
    TrainingRun.objects.filter(pk=run.pk).update(max_attempts=1)
    services.run_claim(run_id=run.pk, worker="w")
    later = timezone.now() + timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 5)
    assert services.runs_reconcile(now=later) >= 1
    run.refresh_from_db()
    assert run.status == Status.FAILED and run.round.status == Round.Status.CLOSED


def test_finishing_other_runs_leaves_rounds_alone(generating, model_dir):
    project, _, _, gen = generating
    reward = services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)},
                                 rounds=[1])
    services.run_request_cancel(run_id=reward.pk)
    assert Round.objects.get(pk=gen.round_id).status == Round.Status.GENERATING
    assert Round.objects.get(project=project, number=1).status == Round.Status.OPEN


def test_a_round_never_opens_without_samples(generating):
    from training.jobs.base import JobFailed, config_parse
    from training.jobs.generate import samples_write

    _, _, _, run = generating
    rnd = Round.objects.get(pk=run.round_id)
    same = [SimpleNamespace(text="same", logprob=-1.0, num_tokens=1)] * 4  # no prompt has K distinct samples
    with pytest.raises(JobFailed, match="fewer than 4 distinct"):
        samples_write(run=run, rnd=rnd, prompts=list(rnd.prompts.order_by("id")), samples=[same, same],
                      config=config_parse(kind="generate", data=run.config), health={})
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.GENERATING and not Sample.objects.filter(prompt__round=rnd).exists()
    claimed = services.run_claim(run_id=run.pk, worker="w")
    services.run_finish(run_id=run.pk, status=Status.FAILED, summary={}, error="no samples",
                        claim_token=claimed.claim_token)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.CLOSED
    assert not Round.objects.filter(status=Round.Status.OPEN, prompts__samples__isnull=True).exists()
