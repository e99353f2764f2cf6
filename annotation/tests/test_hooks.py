"""Code hooks are chosen by name from the operator's registry: a typed ``module:function`` is refused and never
imported (issue 10, item 1), in the service, the browser and the API, at creation and at run time."""
import importlib
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from lab.ai_labelers.services import ai_labeler_run
from annotation.errors import InvalidInput
from annotation.hooks import hook_check, hook_load_for_operator, hook_names, hook_resolve, hooks_settings_check
from annotation.models import Ranking
from annotation.quality.models import AILabeler
from annotation.utility import default_utility

ATTACK = "pydoc:pipepager"  # would run a shell command on the sample's text


def constant(prompt_messages, response_text):
    return 1.0


@pytest.fixture
def imports(monkeypatch):
    """Every module name passed to importlib.import_module from now on (the call still happens)."""
    seen: list[str] = []
    real = importlib.import_module

    def recording(name, package=None):
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", recording)
    return seen


@pytest.fixture
def qa(make_user, make_project):
    res, alice = make_user("res"), make_user("alice")
    project = make_project(slug="hk", k=3, prompts=2, labelers=[alice], researchers=[res])
    browser, api = Client(), APIClient()
    browser.force_login(res)
    api.force_authenticate(res)
    return project, browser, api


def test_registry_lists_builtins_and_operator_hooks(settings):
    assert hook_names(kind="utility") == ["default", "demo"]
    assert hook_resolve(kind="utility", name="default", location="spec") is default_utility
    settings.RLHF_HOOKS = {"reward_fn": {"const": f"{__name__}:constant"}}
    assert hook_names(kind="reward_fn") == ["const", "default", "demo"]
    assert hook_resolve(kind="reward_fn", name="const", location="x") is constant
    with pytest.raises(InvalidInput, match="not a registered task_check hook; choose one of: demo_grammar"):
        hook_check(kind="task_check", name="const", location="x")


def test_typed_module_function_is_refused_without_import(imports):
    for spec in (ATTACK, "os:system", "default ", None, 3):
        with pytest.raises(InvalidInput, match="choose one of: default, demo") as error:
            hook_resolve(kind="utility", name=spec, location="spec")
        assert error.value.location == "spec"
    assert imports == []


def test_operator_command_line_may_still_name_a_function():
    assert hook_load_for_operator(f"{__name__}:constant", kind="utility", location="utility") is constant
    assert hook_load_for_operator("default", kind="utility", location="utility") is default_utility


def test_malformed_rlhf_hooks_stops_the_start(settings):
    for bad in ([], {"shell": {}}, {"utility": {"Bad Name": "m:f"}}, {"utility": {"x": "not a target"}}):
        settings.RLHF_HOOKS = bad
        with pytest.raises(ImproperlyConfigured, match="RLHF_HOOKS"):
            hooks_settings_check()


def test_api_refuses_a_utility_spec_naming_code(qa, imports):
    project, _, api = qa
    pydoc_loaded = "pydoc" in sys.modules
    response = api.post(f"/api/projects/{project.slug}/quality/ai-labelers/",
                        {"name": "evil", "kind": "utility", "spec": ATTACK}, format="json")
    assert response.status_code == 400
    assert response.json()["location"] == "spec" and "choose one of: default, demo" in response.json()["error"]
    assert not AILabeler.objects.exists() and not get_user_model().objects.filter(username="ai-evil").exists()
    assert "pydoc" not in imports and ("pydoc" in sys.modules) == pydoc_loaded
    listed = api.get(f"/api/projects/{project.slug}/quality/ai-labelers/").json()
    assert listed["utility_hooks"] == ["default", "demo"]


def test_browser_refuses_a_utility_spec_naming_code(qa, imports):
    project, browser, _ = qa
    page = browser.get(reverse("annotation:quality", args=[project.slug])).content.decode()
    assert '<datalist id="utility-hooks"><option value="default"><option value="demo"></datalist>' in page
    response = browser.post(reverse("annotation:quality-ai-labeler-add", args=[project.slug]),
                            {"name": "evil", "kind": "utility", "spec": ATTACK})
    assert response.status_code == 400 and "is not a registered utility hook" in response.content.decode()
    assert not AILabeler.objects.exists() and "pydoc" not in imports


def test_a_stored_row_naming_code_is_refused_at_run_time(qa, imports, make_user):
    project, browser, api = qa
    bot = make_user("ai-old")
    old = AILabeler.objects.create(user=bot, project=project, kind=AILabeler.Kind.UTILITY, spec="os:system")
    with pytest.raises(InvalidInput, match="not a registered utility hook"):
        ai_labeler_run(labeler=old)
    response = api.post(f"/api/projects/{project.slug}/quality/ai-labelers/run/", {"labeler_id": old.pk},
                        format="json")
    assert response.status_code == 400 and response.json()["location"] == "spec"
    page = browser.post(reverse("annotation:quality-ai-labeler-run", args=[project.slug]), {"labeler_id": old.pk})
    assert page.status_code == 400
    assert "os" not in imports and not Ranking.objects.exists()


def test_hook_list_endpoint(qa, settings):
    _, _, api = qa
    settings.RLHF_HOOKS = {"task_check": {"parses": f"{__name__}:constant"}}
    assert api.get("/api/hooks/").json() == {"utility": ["default", "demo"], "reward_fn": ["default", "demo"],
                                             "task_check": ["demo_grammar", "parses"]}
    assert APIClient().get("/api/hooks/").status_code in (401, 403)
