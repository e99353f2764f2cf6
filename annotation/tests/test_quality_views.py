"""Quality page and API: researchers only, actions write through the services, bad input writes nothing."""
import io
import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotation.quality.metrics import shrunk_weight

from annotation.models import PairwiseComparison, Prompt, Ranking
from annotation.quality.models import GoldRanking, PromptReview, QualitySettings, RankingExclusion
from annotation.quality.services import ranking_exclude
from annotation.tests.test_quality_services import rank_all

THIN = shrunk_weight(0.05, 9)  # 3 prompts × C(3,2) pairs of evidence
QUALITY_PAGE_QUERIES = 22  # the page with 3 or 12 prompts in review (it was 33 and 75 with a query per row); 3 of
# them list the labelers' content flags (counts, latest) and the reward models for the uncertainty select


@pytest.fixture
def qc(make_user, make_project):  # carol: floor weight on 9 pairs, shrunk toward 1 (THIN)
    alice, bob, carol, res = make_user("alice"), make_user("bob"), make_user("carol"), make_user("res")
    project = make_project(slug="qc", k=3, overlap=3, prompts=3, labelers=[alice, bob, carol], researchers=[res])
    rank_all(project, alice)
    rank_all(project, bob)
    rank_all(project, carol, reverse=True, time_spent_ms=500)
    Prompt.objects.filter(pk=Prompt.objects.filter(project=project).first().pk).update(
        messages=[{"role": "user", "content": "<script>alert(1)</script> question"}])
    researcher, labeler = Client(), Client()
    researcher.force_login(res)
    labeler.force_login(alice)
    return {"project": project, "researcher": researcher, "labeler": labeler, "carol": carol}


def test_quality_page_for_researchers_only(qc, client, make_user):
    url = reverse("annotation:quality", args=["qc"])
    page = qc["researcher"].get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Krippendorff" in html and "carol" in html and 'id="agreement-data"' in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html  # escaped model output
    assert 'src="/static/app/quality.js"' in html
    assert qc["labeler"].get(url).status_code == 403
    stranger = Client()
    stranger.force_login(make_user("stranger"))
    assert stranger.get(url).status_code == 404
    assert client.get(url).status_code == 302  # login first


def test_page_actions(qc):
    slug, researcher, carol = "qc", qc["researcher"], qc["carol"]
    ranking = Ranking.objects.filter(labeler=carol).first()
    response = researcher.post(reverse("annotation:quality-exclusion", args=[slug]),
                               {"ranking_id": ranking.pk, "reason": ""}, follow=True)
    assert "Nothing changed" in response.content.decode() and not RankingExclusion.objects.exists()
    researcher.post(reverse("annotation:quality-exclusion", args=[slug]), {"ranking_id": ranking.pk, "reason": "bad"})
    assert RankingExclusion.objects.filter(ranking=ranking).exists()
    researcher.post(reverse("annotation:quality-exclusion", args=[slug]), {"ranking_id": ranking.pk, "action": "include"})
    assert not RankingExclusion.objects.exists()
    researcher.post(reverse("annotation:quality-weights", args=[slug]))
    assert set(PairwiseComparison.objects.filter(ranking__labeler=carol).values_list("weight", flat=True)) == {THIN}
    response = researcher.post(reverse("annotation:quality-settings", args=[slug]), {"gold_rate": "2"}, follow=True)
    assert "Settings not saved" in response.content.decode() and not QualitySettings.objects.exists()
    researcher.post(reverse("annotation:quality-settings", args=[slug]), {"gold_rate": "0.1", "review_threshold": "0.4"})
    assert QualitySettings.objects.get().gold_rate == 0.1
    prompt = Prompt.objects.filter(project=qc["project"]).first()
    adopted = Ranking.objects.get(prompt=prompt, labeler__username="alice")
    researcher.post(reverse("annotation:quality-review", args=[slug, prompt.pk]),
                    {"adopt": adopted.pk, "exclude": [Ranking.objects.get(prompt=prompt, labeler=carol).pk]})
    assert PromptReview.objects.get(prompt=prompt).status == "adjudicated"
    upload = io.BytesIO(json.dumps({"prompt_id": prompt.pk, "ranking": [[0], [1], [2]]}).encode())
    upload.name = "gold.jsonl"
    researcher.post(reverse("annotation:quality-gold", args=[slug]), {"file": upload})
    assert GoldRanking.objects.filter(prompt=prompt).exists()
    consensus = researcher.get(reverse("annotation:quality-consensus", args=[slug]))
    rows = [json.loads(line) for line in b"".join(consensus.streaming_content).splitlines()]
    assert len(rows) == 3 and {row["basis"] for row in rows} == {"adjudicated", "bradley_terry"}
    assert qc["labeler"].post(reverse("annotation:quality-weights", args=[slug])).status_code == 403


def test_quality_api(qc):
    researcher, slug = qc["researcher"], "qc"
    report = researcher.get(f"/api/projects/{slug}/quality/").json()
    assert report["overall"]["rankings"] == 9 and len(report["labelers"]) == 3
    assert qc["labeler"].get(f"/api/projects/{slug}/quality/").status_code == 403
    assert researcher.get(f"/api/projects/{slug}/quality/?round=x").status_code == 400
    weights = researcher.post(f"/api/projects/{slug}/quality/weights/").json()["weights"]
    assert weights["carol"] == THIN
    bad = researcher.post(f"/api/projects/{slug}/quality/exclusions/", {"ranking_id": 10**9, "reason": "x"},
                          content_type="application/json")
    assert bad.status_code == 400 and bad.json()["location"] == "ranking"
    ranking = Ranking.objects.filter(labeler=qc["carol"]).first()
    ok = researcher.post(f"/api/projects/{slug}/quality/exclusions/", {"ranking_id": ranking.pk, "reason": "x"},
                         content_type="application/json")
    assert ok.json() == {"ranking_id": ranking.pk, "excluded": True}
    prompt = Prompt.objects.filter(project=qc["project"]).last()
    ids = list(prompt.samples.order_by("position").values_list("pk", flat=True))
    bad = researcher.post(f"/api/projects/{slug}/quality/gold/", {"prompt_id": prompt.pk, "tiers": [[ids[0]]]},
                          content_type="application/json")
    assert bad.status_code == 400 and "not ranked" in bad.json()["error"] and not GoldRanking.objects.exists()
    gold = researcher.post(f"/api/projects/{slug}/quality/gold/", {"prompt_id": prompt.pk, "tiers": [ids[::-1]]},
                           content_type="application/json")
    assert gold.status_code == 200 and Prompt.objects.get(pk=prompt.pk).is_gold
    review = researcher.post(f"/api/projects/{slug}/quality/reviews/", {"prompt_id": prompt.pk, "note": "fine"},
                             content_type="application/json")
    assert review.json()["status"] == "kept"
    settings = researcher.post(f"/api/projects/{slug}/quality/settings/", {"gold_rate": 1.5},
                               content_type="application/json")
    assert settings.status_code == 400 and settings.json()["location"] == "gold_rate"
    consensus = researcher.get(f"/api/projects/{slug}/quality/consensus/")
    assert consensus.status_code == 200 and len(b"".join(consensus.streaming_content).splitlines()) == 3


@pytest.mark.parametrize("prompts", [3, 12])
def test_quality_page_reads_a_fixed_number_of_queries_whatever_the_review_queue(
        prompts, make_user, make_project, django_assert_max_num_queries):
    alice, bob, res = make_user("alice"), make_user("bob"), make_user("res")
    project = make_project(slug="many", k=3, overlap=2, prompts=prompts, labelers=[alice, bob], researchers=[res])
    rank_all(project, alice)
    rank_all(project, bob, reverse=True)  # every prompt disagrees: all of them are queued for review
    researcher = Client()
    researcher.force_login(res)
    with django_assert_max_num_queries(QUALITY_PAGE_QUERIES):  # no query per queued prompt or ranking
        page = researcher.get(reverse("annotation:quality", args=["many"]))
    assert page.status_code == 200
    items = page.context["review_items"]
    assert len(items) == min(prompts, 10)
    for item in items:
        assert [s.position for s in item["samples"]] == [0, 1, 2]
        assert sorted(r["order"] for r in item["rankings"]) == ["A > B > C", "C > B > A"]


def _quality_page_with_rows(make_user, make_project, *, slug: str, rows: int):
    """A project whose quality page lists ``rows`` of everything: prompts in review (2 per row: 3 disagree, one
    is settled by its excluded ranking), flagged responses, excluded rankings, AI labelers, selection records and reward models."""
    from annotation.services import ranking_record
    from lab.active.services import round_select
    from lab.ai_labelers.services import ai_labeler_create
    from training.models import ModelArtifact

    alice, bob, res = make_user(f"alice-{slug}"), make_user(f"bob-{slug}"), make_user(f"res-{slug}")
    project = make_project(slug=slug, k=3, overlap=2, prompts=3 * rows, labelers=[alice, bob], researchers=[res])
    rankings = []
    for prompt in project.prompts.order_by("id"):  # alice and bob disagree on every prompt: all go to review
        ids = list(prompt.samples.order_by("position").values_list("id", flat=True))
        rankings.append(ranking_record(prompt=prompt, labeler=alice, tiers=[[i] for i in ids], source="human",
                                       flags={ids[0]: ["unsafe"]}))
        ranking_record(prompt=prompt, labeler=bob, tiers=[[i] for i in ids[::-1]], source="human")
    for n in range(rows):
        ranking_exclude(project=project, ranking_id=rankings[n].pk, user=res, reason="test")
        ai_labeler_create(project=project, name=f"rules{n}", kind="utility", spec="default")
        round_select(round_=project.rounds.get(), strategy="random", seed=n, user=res)
        ModelArtifact.objects.create(project=project, kind="reward", name=f"rm{n}", path=f"runs/{n}/model")
    client = Client()
    client.force_login(res)
    return client


def test_quality_page_reads_the_same_number_of_queries_whatever_its_rows(make_user, make_project):
    counts = {}
    for rows in (1, 4):
        client = _quality_page_with_rows(make_user, make_project, slug=f"rows{rows}", rows=rows)
        with CaptureQueriesContext(connection) as queries:
            page = client.get(reverse("annotation:quality", args=[f"rows{rows}"]))
        assert page.status_code == 200
        html = page.content.decode()
        assert len(page.context["review_items"]) == min(2 * rows, 10) and f"rules{rows - 1}" in html
        assert len(page.context["excluded"]) == len(page.context["selections"]) == rows
        assert len(page.context["reward_artifacts"]) == rows and len(page.context["flagged"]["items"]) == 3 * rows
        counts[rows] = len(queries)
    assert counts[1] == counts[4], counts  # no query per prompt, ranking, flag, labeler, selection or model
    assert counts[4] <= QUALITY_PAGE_QUERIES
