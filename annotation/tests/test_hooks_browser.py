"""Real Chromium (Playwright): a researcher who types ``pydoc:pipepager`` as an AI labeler's utility on the
quality page is refused with the registered names shown, and nothing is saved (issue 10, item 1)."""
import os

import pytest

from annotation.models import Membership, Project, Round
from annotation.quality.models import AILabeler
from annotation.tests.test_browser import _login

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def test_quality_page_refuses_a_utility_naming_code(browser_page, live_server, make_user):
    page, researcher = browser_page, make_user("rex")
    project = Project.objects.create(slug="hooks-b", name="Hooks B", k=2)
    Round.objects.create(project=project, number=1)
    Membership.objects.create(project=project, user=researcher, role=Membership.Role.RESEARCHER)
    _login(page, live_server, "rex")
    page.goto(f"{live_server.url}/p/hooks-b/quality/")
    options = page.eval_on_selector_all("#utility-hooks option", "els => els.map(e => e.value)")
    assert options == ["default", "demo"]
    form = page.locator("#ai-labelers form.stack")
    form.locator("input[name=name]").fill("evil")
    form.locator("select[name=kind]").select_option("utility")
    form.locator("input[name=spec]").fill("pydoc:pipepager")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "is not a registered utility hook; choose one of: default, demo" in page.content()
    assert not AILabeler.objects.exists()
