"""What a researcher sees on the quality page: the labelers' content flags (unsafe, factually wrong, off-topic),
speed flags named as such, and the uncertainty strategy's reward model chosen from a list; the styled 403 page."""
import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from annotation.services import ranking_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def flagged(make_user, make_project):
    labeler, researcher = make_user("lars"), make_user("rita")
    project = make_project(slug="fl", k=3, prompts=2, labelers=[labeler], researchers=[researcher])
    first, second = project.prompts.order_by("id")
    ids = list(first.samples.order_by("position").values_list("id", flat=True))
    ranking_record(prompt=first, labeler=labeler, tiers=[[i] for i in ids], source="human",
                   flags={ids[2]: ["unsafe", "off_topic"], ids[0]: ["factually_wrong"]})
    ranking_record(prompt=second, labeler=labeler, source="human",
                   tiers=[[i] for i in second.samples.values_list("id", flat=True)])
    c = Client()
    c.force_login(researcher)
    return project, c, first


def test_labelers_flags_are_shown_to_researchers(flagged):
    project, c, first = flagged
    page = c.get(reverse("annotation:quality", args=[project.slug])).content.decode()
    section = page[page.index('id="flags"'):page.index('id="review"')]
    assert "3 flags from labelers" in section
    assert "Unsafe: <strong>1</strong>" in section and "Factually wrong: <strong>1</strong>" in section
    assert "Off-topic: <strong>1</strong>" in section and f"#{first.pk}" in section
    assert section.count('<span class="flag">') == 3 and "lars" in section
    labelers = page[page.index('id="labelers"'):page.index('id="flags"')]
    assert ">Too fast</th>" in labelers and ">Flags</th>" not in labelers  # the speed column says what it is


def test_uncertainty_offers_the_projects_reward_models(flagged, tmp_path):
    from training.models import ModelArtifact

    project, c, _ = flagged
    url = reverse("annotation:quality", args=[project.slug])
    assert "No reward model yet" in c.get(url).content.decode()
    older = ModelArtifact.objects.create(project=project, kind="reward", name="rm-old", path=str(tmp_path))
    newer = ModelArtifact.objects.create(project=project, kind="reward", name="rm-new", path=str(tmp_path))
    ModelArtifact.objects.create(project=project, kind="policy", name="not-a-reward-model", path=str(tmp_path))
    page = c.get(url).content.decode()
    assert '<select name="artifact_id">' in page and 'type="number" name="artifact_id"' not in page
    assert f'<option value="{newer.pk}" selected>rm-new' in page and f'<option value="{older.pk}">rm-old' in page
    assert "not-a-reward-model" not in page[page.index('name="artifact_id"'):]


def test_the_403_page_uses_the_site_layout(flagged, make_user):
    project, _, _ = flagged
    labeler = Client()
    labeler.force_login(project.memberships.get(role="labeler").user)
    response = labeler.get(reverse("annotation:quality", args=[project.slug]))
    html = response.content.decode()
    assert response.status_code == 403
    assert 'class="topbar"' in html and "app/app.css" in html and "<h1>Not allowed</h1>" in html
    assert "My projects" in html


def test_a_form_post_to_the_export_api_with_a_csrf_cookie_is_refused_not_misparsed(flagged):
    """The styled 403 page renders the CSRF token (a cookie); the export API then still answers 403, not a 400
    "JSON parse error" from parsing a form body as JSON."""
    project, _, _ = flagged
    c = Client(enforce_csrf_checks=True)
    c.force_login(project.memberships.get(role="researcher").user)
    c.get(reverse("training:project_runs", args=[project.slug]))  # any page with the layout sets the cookie
    assert "csrftoken" in c.cookies
    response = c.post(f"/api/projects/{project.slug}/export/", {"tiers": "[]"})
    assert response.status_code == 403 and b"CSRF" in response.content


def test_each_strategy_shows_its_measured_saving_and_random_is_the_default(flagged):
    from annotation.quality.strategy_evidence import STRATEGY_EVIDENCE

    project, c, _ = flagged
    page = c.get(reverse("annotation:quality", args=[project.slug])).content.decode()
    select = page[page.index('<select name="strategy">'):]
    select = select[:select.index("</select>")]
    assert '<option value="random" selected>random — the default' in select
    assert select.count(" selected") == 1
    for name in ("uncertainty", "disagreement"):
        assert f'<option value="{name}">{name} — {escape(STRATEGY_EVIDENCE[name])}</option>' in select
