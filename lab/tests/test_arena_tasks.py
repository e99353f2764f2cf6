"""The arena's generation task: enqueued on commit for an arena created without responses (browser and API),
routed to the ``gpu`` queue, and, run in-process, it fills the arena and opens it; a failure is shown."""
import pytest
from django.urls import reverse

from lab import tasks
from lab.services import arena_create
from lab.models import Arena
from training.models import ModelArtifact

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(make_user, make_project):
    researcher = make_user("rita")
    project = make_project(slug="arena", k=4, prompts=1, researchers=[researcher])
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name="sft-policy", path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name="dpo-policy", path="b")
    return project, researcher, model_a, model_b


@pytest.fixture
def queued(monkeypatch):
    """Arena ids sent to the generation task (the broker is not touched)."""
    ids: list[int] = []
    monkeypatch.setattr(tasks.generate_arena, "delay", lambda arena_id: ids.append(arena_id))
    return ids


def test_the_task_is_routed_to_the_gpu_queue():
    from webapp.celery import app

    route = app.amqp.router.route({}, "annotation.tasks.generate_arena", args=(1,), kwargs={})
    assert route["queue"].name == "gpu"


def test_an_arena_without_responses_is_queued_for_generation_on_commit(setup, queued, client,
                                                                         django_capture_on_commit_callbacks):
    project, researcher, model_a, model_b = setup
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="gen", items=["Q?"],
                             user=researcher)
        assert queued == []  # not before the commit
    for callback in callbacks:
        callback()
    assert queued == [arena.pk] and arena.status == Arena.Status.GENERATING
    with django_capture_on_commit_callbacks(execute=True):
        arena_create(project=project, model_a=model_a, model_b=model_b, name="given", user=researcher,
                     items=[{"prompt": "Q?", "response_a": "A", "response_b": "B"}])
    assert queued == [arena.pk]  # with responses there is nothing to generate
    client.force_login(researcher)
    form = {"name": "browser", "model_a": model_a.pk, "model_b": model_b.pk, "prompts": "One?\nTwo?"}
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(reverse("lab:arena-create", args=[project.slug]), form, follow=True)
    browser = Arena.objects.get(name="browser")
    assert queued == [arena.pk, browser.pk] and "a worker is generating" in page.content.decode()


def test_a_failed_generation_is_recorded_and_shown(setup, client):
    project, researcher, model_a, model_b = setup
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="broken", items=["Q?"],
                         user=researcher)
    with pytest.raises(Exception):  # noqa: B017 - the model directories "a" and "b" do not exist
        tasks.generate_arena.apply(args=[arena.pk], throw=True)
    arena.refresh_from_db()
    assert arena.status == Arena.Status.GENERATING and arena.summary["error"]
    client.force_login(researcher)
    page = client.get(reverse("lab:arena", args=[project.slug])).content.decode()
    assert "Generation failed" in page and f"arena generate --arena {arena.pk}" in page
    assert tasks.generate_arena.apply(args=[10**9]).get() == f"no arena {10**9}"


@pytest.mark.slow
def test_the_task_run_in_process_fills_and_opens_the_arena(setup, queued, tmp_path, settings,
                                                             django_capture_on_commit_callbacks):
    from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer

    settings.ARTIFACT_ROOT = tmp_path  # artifacts live inside the artifact root

    project, researcher, model_a, model_b = setup
    tokenizer = build_tokenizer([f"question {i} answer the river hill story" for i in range(50)], tmp_path / "tok",
                                vocab_size=300)
    for artifact, seed in ((model_a, 0), (model_b, 1)):
        artifact.path = str(build_tiny_causal_lm(tmp_path / artifact.name, tokenizer, hidden=16, layers=1, heads=2,
                                                 max_positions=64, seed=seed))
        artifact.save()
    with django_capture_on_commit_callbacks(execute=True):
        arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="gen", user=researcher,
                             items=["Tell a story.", "Answer the question."], sampling={"max_new_tokens": 8})
    assert queued == [arena.pk] and not arena.pairs.exists()
    result = tasks.generate_arena.apply(args=queued).get()  # eagerly, in this process
    arena.refresh_from_db()
    assert arena.status == Arena.Status.OPEN and f"arena {arena.pk} is open" in result
    assert arena.pairs.count() + arena.summary["dropped_identical"] == 2 and arena.pairs.exists()
    for pair in arena.pairs.all():
        assert pair.sample_a.model_name == "sft-policy" and pair.sample_b.model_name == "dpo-policy"
    assert tasks.generate_arena.apply(args=queued).get() == f"arena {arena.pk} is already open"  # a redelivery
