"""Real Chromium (Playwright): a labeler votes in the arena with the mouse and with the keyboard alone; the votes
land as rankings, no model name reaches the page, and a response full of XSS payloads stays inert."""
import os

import pytest

from lab.services import arena_create
from lab.models import ArenaVote
from annotation.models import Membership, Project, Round
from annotation.tests.test_browser import XSS, _login
from training.models import ModelArtifact

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]



def test_vote_by_mouse_and_keyboard_blind_and_inert(browser_page, live_server, make_user, tmp_path):
    page, voter, researcher = browser_page, make_user("val"), make_user("rex")
    project = Project.objects.create(slug="arena-b", name="Arena B", k=2)
    Round.objects.create(project=project, number=1)
    Membership.objects.create(project=project, user=voter)
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name="hidden-alpha", path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name="hidden-beta", path="b")
    items = [{"prompt": f"Question {i}?", "response_a": f"({i}) " + " ".join(XSS), "response_b": f"({i}) **plain**"}
             for i in range(3)]
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="alpha vs beta", items=items)
    _login(page, live_server, "val")
    dialogs, requests = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{live_server.url}/p/arena-b/arena/{arena.pk}/vote/")
    page.wait_for_load_state("networkidle")
    html = page.content()
    assert "hidden-alpha" not in html and "hidden-beta" not in html
    page.screenshot(path=str(tmp_path / "arena-vote.png"), full_page=True)

    page.click("button[data-choice='left']")  # mouse
    page.wait_for_selector(".notice:has-text('Vote saved.')")
    page.keyboard.press("ArrowRight")  # keyboard: right is better
    page.wait_for_function("() => document.querySelector('.mini-progress strong').textContent === '2'")
    page.keyboard.press("b")  # both bad
    page.wait_for_selector("text=Nothing left to vote on")

    votes = list(ArenaVote.objects.filter(voter=voter).select_related("ranking").order_by("id"))
    assert len(votes) == 3 and votes[2].outcome == "both_bad"
    for vote, choice in zip(votes[:2], ("left", "right")):
        winner = vote.left_sample_id if choice == "left" else ({vote.pair.sample_a_id, vote.pair.sample_b_id}
                                                                - {vote.left_sample_id}).pop()
        assert vote.ranking.pairs.get().chosen_id == winner
        assert vote.ranking.time_spent_ms > 0
    assert not votes[2].ranking.pairs.exists()
    assert dialogs == []
    assert not any("xss-htmx-probe" in url for url in requests)
