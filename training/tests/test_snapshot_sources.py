"""Training snapshots take an explicit ranking-source choice (human only by default), record it, weight AI
rankings under "weighted", say why a snapshot would be empty, and show the choice on the run page."""
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from annotation.errors import InvalidInput
from annotation.provenance import source_selection_parse
from annotation.services import ranking_record
from training import services
from training.models import DatasetSnapshot, TrainingRun
from training.selectors import snapshot_ranked_groups

pytestmark = pytest.mark.django_db


@pytest.fixture
def mixed(ranked, make_user):
    """The ranked project (6 human rankings) plus an AI ranking and an arena-source ranking of each prompt."""
    project, researcher, labeler = ranked
    ai, voter = make_user("ai-bot@ranked"), make_user("vic")
    for prompt in project.prompts.order_by("id"):
        ids = list(prompt.samples.order_by("position").values_list("id", flat=True))
        ranking_record(prompt=prompt, labeler=ai, tiers=[[i] for i in ids[::-1]], source="ai")
        ranking_record(prompt=prompt, labeler=voter, tiers=[ids[:2], ids[2:]], source="arena")
    return project, researcher


def _sources_of(snapshot):
    return set(snapshot.rankings.values_list("source", flat=True))


def test_default_snapshot_is_human_only_and_records_the_choice(mixed):
    project, _ = mixed
    snap = services.snapshot_create(project=project)
    assert _sources_of(snap) == {"human"} and snap.num_rankings == 6
    assert snap.filters["sources"] == "human" and snap.filters["rankings_by_source"] == {"human": 6}
    assert "ai" not in snap.filters["included_sources"] and "arena" not in snap.filters["included_sources"]


@pytest.mark.parametrize("choice, arena, expected", [
    ("ai", False, {"ai"}), ("both", False, {"human", "ai"}), ("arena", False, {"arena"}),
    ("human", True, {"human", "arena"}), ("weighted", False, {"human", "ai"}),
])
def test_explicit_choices_include_the_others(mixed, choice, arena, expected):
    project, _ = mixed
    snap = services.snapshot_create(project=project,
                                    sources=source_selection_parse(choice=choice, include_arena=arena))
    assert _sources_of(snap) == expected
    assert snap.filters["sources"] == choice and snap.filters["include_arena"] is arena


def test_weighted_scales_ai_rankings_in_the_trainer_input(mixed):
    project, _ = mixed
    snap = services.snapshot_create(project=project, sources=source_selection_parse(choice="weighted", ai_weight=0.2))
    assert snap.filters["ai_weight"] == 0.2
    weights = sorted(w for group in snapshot_ranked_groups(snapshot=snap) for w in group.weights)
    assert weights == [0.2] * 6 + [1.0] * 6


def test_an_empty_choice_says_why(make_user, make_project):
    project = make_project(slug="aionly", k=3, prompts=2)
    bot = make_user("ai-x@aionly")
    for prompt in project.prompts.all():
        ranking_record(prompt=prompt, labeler=bot, tiers=[[s.pk] for s in prompt.samples.all()], source="ai")
    with pytest.raises(InvalidInput) as error:
        services.snapshot_create(project=project)
    assert error.value.location == "sources" and "2 ai" in error.value.message and "choose them" in error.value.message
    assert not DatasetSnapshot.objects.exists()
    with pytest.raises(InvalidInput, match="must be true or false"):
        source_selection_parse(include_arena="maybe")


def test_run_page_api_and_command_show_the_sources(mixed, model_dir, sent):
    project, researcher = mixed
    client = Client()
    client.force_login(researcher)
    response = client.post(f"/api/projects/{project.slug}/runs/", {
        "kind": "reward", "config": {"base_model": str(model_dir)}, "sources": "weighted", "ai_weight": 0.5,
    }, content_type="application/json")
    assert response.status_code == 201, response.content
    run = TrainingRun.objects.get()
    assert response.json()["snapshot"]["filters"]["sources"] == "weighted"
    page = client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "<strong>weighted</strong>: ai, gold, human, imported, simulated (AI pairs × 0.5)" in page
    assert "6 ai, 6 human" in page
    bad = client.post(f"/api/projects/{project.slug}/runs/", {"kind": "reward", "config": {}, "sources": "robots"},
                      content_type="application/json")
    assert bad.status_code == 400 and bad.json()["location"] == "sources"
    form = client.post(reverse("training:project_runs", args=[project.slug]), {
        "base_model_path": str(model_dir), "epochs": "1", "learning_rate": "0.0001", "batch_size": "4",
        "max_length": "128", "eval_fraction": "0.2", "lora_r": "8", "sources": "ai"})
    assert form.status_code == 302 and TrainingRun.objects.latest("id").snapshot.filters["sources"] == "ai"
    listing = client.get(reverse("training:project_runs", args=[project.slug])).content.decode()
    assert '<span class="muted">(ai)</span>' in listing and '<span class="muted">(weighted)</span>' in listing
    out = StringIO()
    call_command("train_reward_model", "--project", project.slug, "--base", str(model_dir), "--sources", "arena",
                 stdout=out)
    assert "6 rankings" in out.getvalue() and "sources arena: arena" in out.getvalue()
