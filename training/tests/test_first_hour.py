"""A fresh project in the browser: build the tiny base models (researchers only, idempotent, 400 on a project
without texts), and launch forms that default to the newest base model or policy."""
import re

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Project
from training.models import ModelArtifact, PoolPrompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(ranked, make_user, artifact_root):
    project, researcher, labeler = ranked

    def login(user):
        c = Client()
        c.force_login(user)
        return c

    return project, login(researcher), login(labeler), login(make_user("eve"))


def selected(page: str, name: str) -> str | None:
    """The value of the selected option of the <select name=...> on the page."""
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', page, re.S)
    assert select, f"no select {name}"
    option = re.search(r'<option value="([^"]*)"[^>]*selected', select.group(1))
    return option.group(1) if option else None


@pytest.mark.slow
def test_a_researcher_builds_the_base_models_from_the_browser_once(people):
    project, researcher, labeler, outsider = people
    runs = reverse("training:project_runs", args=[project.slug])
    build = reverse("training:base_models_build", args=[project.slug])
    assert b"Build tiny base models" in researcher.get(runs).content
    assert b"Build tiny base models" not in labeler.get(runs).content
    assert labeler.post(build).status_code == 403 and outsider.post(build).status_code == 404
    assert not ModelArtifact.objects.exists()

    response = researcher.post(build, follow=True)
    assert b"Built the base models tiny-reward-model, tiny-causal-lm." in response.content
    first = dict(ModelArtifact.objects.values_list("name", "pk"))
    assert sorted(first) == ["tiny-causal-lm", "tiny-reward-model"]
    assert b"Build tiny base models" not in response.content
    # the launch form now defaults to the reward base, not to "a model directory instead"
    assert selected(response.content.decode(), "base_artifact") == str(first["tiny-reward-model"])

    again = researcher.post(build, follow=True)  # a double submit builds nothing
    assert b"exist already" in again.content and dict(ModelArtifact.objects.values_list("name", "pk")) == first


def test_a_project_without_texts_is_told_so_and_nothing_is_written(make_user, artifact_root):
    researcher = make_user("rita")
    project = Project.objects.create(slug="empty", name="Empty", k=2)
    project.memberships.create(user=researcher, role="researcher")
    c = Client()
    c.force_login(researcher)
    response = c.post(reverse("training:base_models_build", args=["empty"]))
    assert response.status_code == 400 and b"has no prompts: import some first" in response.content
    assert not ModelArtifact.objects.exists() and not artifact_root.exists()


def test_the_forms_default_to_the_newest_base_model_and_policy(people, model_dir):
    project, researcher, _, _ = people
    make = lambda kind, name: ModelArtifact.objects.create(project=project, kind=kind, name=name, path=str(model_dir))
    rm_base, lm_base = make("base", "tiny-reward-model"), make("base", "tiny-causal-lm")
    PoolPrompt.objects.bulk_create(
        PoolPrompt(project=project, messages=[{"role": "user", "content": f"p{i}"}], content_sha256=f"{i:064d}")
        for i in range(3))
    runs = researcher.get(reverse("training:project_runs", args=[project.slug])).content.decode()
    assert selected(runs, "base_artifact") == str(rm_base.pk)
    lineage = researcher.get(reverse("training:project_lineage", args=[project.slug])).content.decode()
    assert lineage.count(f'<option value="{lm_base.pk}" selected>') == 2  # start next round and train a policy
    assert 'name="sample" value="3"' in lineage  # the whole pool of 3 (at most 8)
    assert f'<option value="{rm_base.pk}"' not in lineage  # the reward model's base is no policy

    reward, policy = make("reward", "rm-1"), make("policy", "dpo-1")  # after runs: still a sensible default
    runs = researcher.get(reverse("training:project_runs", args=[project.slug])).content.decode()
    assert selected(runs, "base_artifact") == str(rm_base.pk)
    lineage = researcher.get(reverse("training:project_lineage", args=[project.slug])).content.decode()
    assert lineage.count(f'<option value="{policy.pk}" selected>') == 2
    assert selected(lineage, "reward_artifact") == str(reward.pk)


def test_pasted_prompts_win_over_the_prefilled_pool_sample(people, stored_model, sent):
    project, researcher, _, _ = people
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    url = reverse("training:start_round", args=[project.slug])
    form = {"policy": policy.pk, "sample": 8, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}
    response = researcher.post(url, {**form, "prompts_text": "One prompt\nAnother prompt"})
    assert response.status_code == 302
    assert project.rounds.order_by("-number").first().prompts.count() == 2
