"""Run lifecycle services: create (validated, snapshotted, queued on commit), claim, report, reconcile."""
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation.errors import InvalidInput, NotAllowed
from training import services
from training.models import DatasetSnapshot, MetricPoint, ModelArtifact, TrainingRun
from training.tests.conftest import rank_all

pytestmark = pytest.mark.django_db
Status = TrainingRun.Status


def _create(project, model_dir, user=None, **config):
    return services.run_create(
        project=project, kind="reward", config={"base_model": str(model_dir), **config}, user=user
    )


def _counts():
    return DatasetSnapshot.objects.count(), TrainingRun.objects.count()


def test_create_snapshots_and_enqueues_on_commit(ranked, model_dir, sent, django_capture_on_commit_callbacks):
    project, researcher, _ = ranked
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run = _create(project, model_dir, user=researcher, epochs=2)
        assert sent == []  # nothing is sent before the transaction commits
    assert len(callbacks) == 1 and sent == [run.id]
    assert run.status == Status.QUEUED and run.config["epochs"] == 2.0 and run.config["learning_rate"] == 5e-5
    snap = run.snapshot
    assert (snap.num_rankings, snap.num_prompts, snap.num_pairs) == (6, 6, 6 * 6)
    assert snap.filters == {"rounds": [1], "sources": "human", "included_sources": ["gold", "human", "imported",
                                                                                  "simulated"],
                            "ai_weight": None, "include_arena": False, "rankings_by_source": {"human": 6}}
    assert len(snap.content_hash) == 64 and run.max_attempts == 3


@pytest.mark.parametrize(
    "config, location",
    [
        ({"learning_rate": -1.0}, "config.learning_rate"),
        ({"epochs": "ten"}, "config.epochs"),
        ({"no_such_setting": 1}, "config.no_such_setting"),
    ],
)
def test_bad_config_rejected_and_nothing_written(ranked, model_dir, sent, config, location,
                                                 django_capture_on_commit_callbacks):
    project, researcher, _ = ranked
    before = _counts()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(InvalidInput) as error:
        _create(project, model_dir, user=researcher, **config)
    assert error.value.location == location and error.value.message
    assert _counts() == before and sent == []


@pytest.mark.parametrize("config, location, says", [
    ({"early_stopping_patience": -1, "eval_fraction": 0.2}, "config.early_stopping_patience", "must be >= 0"),
    ({"early_stopping_patience": "3", "eval_fraction": 0.2}, "config.early_stopping_patience", "must be int"),
    ({"early_stopping_patience": 3}, "config.early_stopping_patience", "set eval_fraction > 0"),
    ({"eval_fraction": 1.0}, "config.eval_fraction", "must be <= 0.9"),
    ({"eval_fraction": "0.2"}, "config.eval_fraction", "must be float"),
])
def test_dpo_early_stopping_settings_are_checked_at_launch(ranked, model_dir, sent, config, location, says):
    """DPO's early stopping (issue 12) is checked like every DPOConfig setting: by the one service that the
    browser form and the API both call, before anything is written."""
    project, researcher, _ = ranked
    before = _counts()
    with pytest.raises(InvalidInput, match=says) as error:
        services.run_create(project=project, kind="dpo", config={"base_model": str(model_dir), **config},
                            user=researcher)
    assert error.value.location == location and _counts() == before and sent == []
    run = services.run_create(project=project, kind="dpo", user=researcher, config={
        "base_model": str(model_dir), "eval_fraction": 0.2, "early_stopping_patience": 3})
    assert (run.config["eval_fraction"], run.config["early_stopping_patience"],
            run.config["early_stopping_min_delta"]) == (0.2, 3, 0.0)


def test_the_browser_dpo_form_shows_a_bad_early_stopping_setting(ranked, stored_model, sent, client):
    from django.urls import reverse

    project, researcher, _ = ranked
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    client.force_login(researcher)
    page = client.get(reverse("training:project_lineage", args=[project.slug])).content.decode()
    assert "early_stopping_patience" in page  # the config field's help names the settings
    answer = client.post(reverse("training:policy_run", args=[project.slug]), {
        "kind": "dpo", "policy": policy.pk, "config": '{"early_stopping_patience": 3}'})
    assert answer.status_code == 400 and TrainingRun.objects.count() == 0
    assert "config.early_stopping_patience: needs held-out prompts: set eval_fraction &gt; 0" in answer.content.decode()


def test_missing_model_directory_and_unknown_kind_rejected(ranked, tmp_path, sent, settings):
    project, researcher, _ = ranked
    settings.RLHF_MODEL_ROOTS = [str(tmp_path)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{ broken")
    for path, operator_says in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "no config.json"),
                                (tmp_path / "broken", "not valid JSON")):
        with pytest.raises(InvalidInput, match=operator_says):  # the operator (command line) is told why
            _create(project, path)
        with pytest.raises(InvalidInput, match="^config.base_model: Not an allowed model directory"):
            _create(project, path, user=researcher)  # a user learns nothing about what exists
    with pytest.raises(InvalidInput, match="Unknown run kind"):
        services.run_create(project=project, kind="magic", config={}, user=researcher)
    assert _counts() == (0, 0) and sent == []


def test_labeler_may_not_launch_and_empty_project_is_rejected(ranked, make_project, model_dir, sent):
    project, researcher, labeler = ranked
    with pytest.raises(NotAllowed):
        _create(project, model_dir, user=labeler)
    empty = make_project(slug="empty", researchers=[])
    with pytest.raises(InvalidInput, match="no ranked pairs"):
        _create(empty, model_dir)
    with pytest.raises(InvalidInput, match="no round 7"):
        services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)}, rounds=[7])
    assert _counts() == (0, 0)


def test_snapshot_is_immutable_after_more_rankings_arrive(ranked, make_user, model_dir, sent):
    project, researcher, _ = ranked
    run = _create(project, model_dir, user=researcher)
    ids, digest = sorted(run.snapshot.rankings.values_list("id", flat=True)), run.snapshot.content_hash
    second = make_user("late")
    project.memberships.create(user=second, role="labeler")
    rank_all(project, second, best_first=False)
    run.snapshot.refresh_from_db()
    assert sorted(run.snapshot.rankings.values_list("id", flat=True)) == ids
    assert run.snapshot.content_hash == digest and run.snapshot.num_rankings == 6
    newer = _create(project, model_dir, user=researcher)
    assert newer.snapshot.num_rankings == 12 and newer.snapshot.content_hash != digest


def test_claim_once_then_fenced_after_stale_takeover(ranked, model_dir, sent, settings):
    project, _, _ = ranked
    run = _create(project, model_dir)
    first = services.run_claim(run_id=run.id, worker="w1")
    assert first.status == Status.RUNNING and first.attempts == 1
    assert services.run_claim(run_id=run.id, worker="w2") is None  # live: a redelivered message does nothing
    later = timezone.now() + timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 1)
    second = services.run_claim(run_id=run.id, worker="w2", now=later)
    assert second.attempts == 2 and second.claim_token != first.claim_token
    assert not services.run_report_step(run_id=run.id, step=1, total=9, metrics={"loss": 1.0},
                                        claim_token=first.claim_token)
    assert not services.run_finish(run_id=run.id, status=Status.SUCCEEDED, summary={}, claim_token=first.claim_token)
    assert services.run_report_step(run_id=run.id, step=1, total=9, metrics={"loss": float("nan")},
                                    claim_token=second.claim_token)
    assert MetricPoint.objects.get(run=run).values == {"loss": None}


@pytest.mark.django_db(transaction=True)
def test_claim_is_exclusive_under_concurrency(ranked, model_dir, sent):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent claims need PostgreSQL row locking")
    project, _, _ = ranked
    run = _create(project, model_dir)
    barrier, winners = threading.Barrier(8), []

    def claim(n: int) -> None:
        try:
            barrier.wait()
            if services.run_claim(run_id=run.id, worker=f"w{n}") is not None:
                winners.append(n)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.refresh_from_db()
    assert len(winners) == 1 and run.attempts == 1 and run.worker == f"w{winners[0]}"


def test_report_step_upserts_so_a_resumed_step_is_stored_once(ranked, model_dir, sent):
    run = _create(ranked[0], model_dir)
    token = services.run_claim(run_id=run.id, worker="w").claim_token
    for loss in (0.9, 0.7):  # the same step reported by two attempts
        services.run_report_step(run_id=run.id, step=3, total=10, metrics={"loss": loss}, claim_token=token)
    services.run_report_eval(run_id=run.id, step=3, metrics={"accuracy": 0.5}, claim_token=token)
    assert MetricPoint.objects.filter(run=run).count() == 2
    assert MetricPoint.objects.get(run=run, split="eval").values == {"accuracy": 0.5}
    assert MetricPoint.objects.get(run=run, split="train").values == {"loss": 0.7}
    run.refresh_from_db()
    assert (run.step, run.total_steps) == (3, 10)


def test_reconcile_requeues_stale_then_fails_after_max_attempts(ranked, model_dir, sent, settings,
                                                                django_capture_on_commit_callbacks):
    run = _create(ranked[0], model_dir)
    stale = timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 1)
    now = timezone.now()
    for attempt in range(1, 4):
        now += stale
        claimed = services.run_claim(run_id=run.id, worker=f"w{attempt}", now=now)
        assert claimed is not None and claimed.attempts == attempt
        with django_capture_on_commit_callbacks(execute=True):
            assert services.runs_reconcile(now=now + stale) == 1
        run.refresh_from_db()
        if attempt < 3:
            assert run.status == Status.QUEUED and "stopped reporting" in run.error and sent[-1] == run.id
    assert run.status == Status.FAILED and "All 3 attempts are used" in run.error
    assert services.runs_reconcile(now=now + 2 * stale) == 0


def test_reconcile_resends_lost_queued_messages_with_backoff(ranked, model_dir, sent,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run = _create(ranked[0], model_dir)
    assert sent == [run.id]
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.runs_reconcile(now=now + timedelta(seconds=30)) == 0  # not a minute old yet
        assert services.runs_reconcile(now=now + timedelta(seconds=61)) == 1
        assert services.runs_reconcile(now=now + timedelta(seconds=62)) == 0  # backs off: next after 2 min
        assert services.runs_reconcile(now=now + timedelta(seconds=61 + 121)) == 1
    assert sent == [run.id] * 3


def test_retry_or_fail_and_requeue_on_shutdown(ranked, model_dir, sent, settings):
    settings.RUN_MAX_ATTEMPTS = 2
    run = _create(ranked[0], model_dir)
    token = services.run_claim(run_id=run.id, worker="w").claim_token
    assert services.run_requeue(run_id=run.id, claim_token=token, reason="worker shutting down")
    run.refresh_from_db()
    assert run.status == Status.QUEUED and run.attempts == 0  # a shutdown spends no attempt
    for _ in range(2):
        token = services.run_claim(run_id=run.id, worker="w").claim_token
        services.run_retry_or_fail(run_id=run.id, error="CUDA out of memory", claim_token=token)
    run.refresh_from_db()
    assert run.status == Status.FAILED and "after 2 attempts" in run.error and "CUDA out of memory" in run.error
    assert services.run_claim(run_id=run.id, worker="w") is None


def test_cancel_queued_is_immediate_running_is_flagged(ranked, model_dir, sent):
    project, researcher, labeler = ranked
    queued, running = _create(project, model_dir), _create(project, model_dir)
    services.run_claim(run_id=running.id, worker="w")
    with pytest.raises(NotAllowed):
        services.run_request_cancel(run_id=queued.id, user=labeler)
    assert services.run_request_cancel(run_id=queued.id, user=researcher).status == Status.CANCELLED
    assert services.run_claim(run_id=queued.id, worker="w") is None
    after = services.run_request_cancel(run_id=running.id, user=researcher)
    assert after.status == Status.RUNNING and after.cancel_requested


def test_log_tail_is_bounded(ranked, model_dir, sent):
    run = _create(ranked[0], model_dir)
    for i in range(300):
        services.run_append_log(run_id=run.id, message=f"line {i} " + "x" * 200)
    run.refresh_from_db()
    assert len(run.log_tail) <= services.LOG_TAIL_CHARS and run.log_tail.rstrip().endswith("line 299 " + "x" * 200)
    assert "line 0 " not in run.log_tail


def test_artifact_register_is_idempotent_per_run(ranked, model_dir, stored_model, sent, artifact_root):
    run = _create(ranked[0], model_dir)
    first = services.artifact_register(project=run.project, kind="reward", name="rm", path=stored_model, run=run,
                                       metrics={"accuracy": 0.75, "loss": float("inf")})
    again = services.artifact_register(project=run.project, kind="reward", name="rm", path=stored_model, run=run)
    assert first.pk == again.pk and ModelArtifact.objects.count() == 1
    assert first.metrics == {"accuracy": 0.75, "loss": None} and first.size_bytes > 0
    with pytest.raises(InvalidInput):
        services.artifact_register(project=run.project, kind="reward", name="x", path=stored_model.parent / "none")
