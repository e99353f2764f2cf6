"""Admin pages of the arena and quality-control models load (changelist, search, change page); votes, pairs and
computed figures are read-only there."""
import pytest
from django.apps import apps
from django.urls import reverse

from lab.services import arena_create, arena_vote
from lab.selectors import arena_shown_order
from lab.models import ArenaVote
from annotation.quality.models import (
    AILabeler, GoldRanking, LabelerReliability, PromptPriority, PromptReview, QualitySettings, RankingExclusion,
    SelectionRecord,
)
from training.models import ModelArtifact

pytestmark = pytest.mark.django_db

LAB_MODELS = {"arena", "arenapair", "arenavote"}  # the admin's URLs name the app: /admin/lab/arena/
MODELS = ["arena", "arenapair", "arenavote", "qualitysettings", "goldranking", "rankingexclusion", "promptreview",
          "labelerreliability", "ailabeler", "selectionrecord", "promptpriority"]


@pytest.fixture
def admin_client(client, make_user, make_project):
    researcher, labeler, bot = make_user("rita"), make_user("lars"), make_user("ai-bot")
    project = make_project(slug="qa", k=2, prompts=2, labelers=[labeler, bot], researchers=[researcher])
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name="a", path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name="b", path="b")
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="a vs b", user=researcher,
                         items=[{"prompt": "Q?", "response_a": "A <b>x</b>", "response_b": "B"}])
    pair = arena.pairs.get()
    vote = arena_vote(pair_id=pair.pk, voter=labeler, choice="tie",
                      left_sample_id=arena_shown_order(pair=pair, voter=labeler)[0])
    prompt = project.prompts.order_by("id").first()
    ids = list(prompt.samples.order_by("position").values_list("id", flat=True))
    QualitySettings.objects.create(project=project, gold_rate=0.1)
    GoldRanking.objects.create(prompt=prompt, tiers=[[i] for i in ids], created_by=researcher)
    RankingExclusion.objects.create(ranking=vote.ranking, reason="test", excluded_by=researcher)
    PromptReview.objects.create(prompt=prompt, status=PromptReview.Status.KEPT, reviewed_by=researcher)
    LabelerReliability.objects.create(project=project, labeler=labeler, reliability=0.9, weight=1.0)
    AILabeler.objects.create(user=bot, project=project, kind=AILabeler.Kind.UTILITY, spec="m:f")
    selection = SelectionRecord.objects.create(round=prompt.round, strategy="random", scores={str(prompt.pk): 1.0},
                                               order=[prompt.pk])
    PromptPriority.objects.create(prompt=prompt, score=1.0, selection=selection)
    admin = make_user("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return client


@pytest.mark.parametrize("model", MODELS)
def test_admin_changelist_and_change_pages_load(admin_client, model):
    app = "lab" if model in LAB_MODELS else "annotation"
    url = reverse(f"admin:{app}_{model}_changelist")
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(url, {"q": "a"}).status_code == 200
    obj = apps.get_model(app, model).objects.get()
    page = admin_client.get(reverse(f"admin:{app}_{model}_change", args=[obj.pk]))
    assert page.status_code == 200 and b"<b>x</b>" not in page.content


def test_votes_cannot_be_changed_or_added_in_admin(admin_client):
    vote = ArenaVote.objects.get()
    assert admin_client.get(reverse("admin:lab_arenavote_add")).status_code == 403
    assert admin_client.get(reverse("admin:lab_arena_add")).status_code == 403
    response = admin_client.post(reverse("admin:lab_arenavote_change", args=[vote.pk]), {"outcome": "a"})
    assert response.status_code == 403 and ArenaVote.objects.get().outcome == vote.outcome
