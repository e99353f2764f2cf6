"""Real Chromium (Playwright): a labeler ranks one prompt by drag-and-drop and one by keyboard alone, and the
Ranking and its pairs land in the database; a page full of XSS payloads opens no dialog and fires no request."""
import hashlib
import os

import pytest

from annotation.models import Membership, PairwiseComparison, Project, Prompt, Ranking, Round, Sample

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
XSS = [
    "<script>alert('script')</script>",
    "<img src=x onerror=\"alert('img')\">",
    "[click me](javascript:alert('link'))",
    "</script><script>alert('breakout')</script>",
    '<div hx-get="/xss-htmx-probe" hx-trigger="load">htmx bait</div>',
    '<span data-hx-get="/xss-htmx-probe2" data-hx-trigger="load">bait</span>',
]



def _project(slug: str, labeler, prompts: list[tuple[str, list[str]]], guidelines: str = "Be **kind**.") -> Project:
    project = Project.objects.create(slug=slug, name=slug.title(), k=len(prompts[0][1]), overlap=1, guidelines=guidelines)
    rnd = Round.objects.create(project=project, number=1)
    for question, answers in prompts:
        prompt = Prompt.objects.create(project=project, round=rnd, messages=[{"role": "user", "content": question}])
        for position, text in enumerate(answers):
            Sample.objects.create(prompt=prompt, text=text, position=position,
                                  text_sha256=hashlib.sha256(text.encode()).hexdigest())
    Membership.objects.create(project=project, user=labeler)
    return project


def _login(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def _drag(page, source, target) -> None:
    """Press, move in small steps (as a hand does, so SortableJS sees the drag), release."""
    start, end = source.bounding_box(), target.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=12)
    page.mouse.up()
    page.wait_for_timeout(200)  # Sortable's drop animation


def _rank_of(page, chip) -> str:
    return page.locator(f"select[name=rank_{chip.get_attribute('data-sample-id')}]").input_value()


def test_rank_by_drag_and_drop_and_by_keyboard(browser_page, live_server, make_user, tmp_path):
    page, labeler = browser_page, make_user("ann")
    answers = ["Plain answer.", "**Bold** answer with `code`.", "Code:\n\n```python\nprint('hi')\n```", "A list:\n\n- one\n- two"]
    _project("dnd", labeler, [(f"Question {i}?", [f"({i}) {a}" for a in answers]) for i in range(2)])
    _login(page, live_server, "ann")
    page.goto(f"{live_server.url}/p/dnd/label/")
    page.screenshot(path=str(tmp_path / "label-page.png"), full_page=True)

    # Prompt 1, mouse only: drag the chips into ranks 1, 2, 2 (a tie) and 3.
    first_assignment = page.locator("#rank-form").get_attribute("action")
    chips = [page.locator(".chip").nth(i) for i in range(4)]
    ids = [chip.get_attribute("data-sample-id") for chip in chips]
    for chip_id, rank in zip(ids, [1, 2, 2, 3]):
        chip = page.locator(f".chip[data-sample-id='{chip_id}']")
        _drag(page, chip, page.locator(f".drop[data-rank='{rank}']"))
        assert _rank_of(page, chip) == str(rank)
    assert page.locator(".tier.tied").count() == 1
    page.screenshot(path=str(tmp_path / "label-ranked.png"), full_page=True)
    page.click("#submit-ranking")
    page.wait_for_selector(".notice:has-text('Ranking saved.')")
    assert page.locator("#rank-form").get_attribute("action") != first_assignment

    # Prompt 2, keyboard only: 1, 2, 3, 4 down the board; Shift+↑ swaps the last two; t ties; f flags; Enter.
    keys = page.keyboard
    page.wait_for_function("() => document.activeElement.classList.contains('chip')")  # the new board took focus
    for rank in "1234":
        keys.press(rank)
        keys.press("ArrowDown")
    last = page.evaluate("document.activeElement.dataset.sampleId")
    keys.press("Shift+ArrowUp")  # the 4th moves up to rank 3, the 3rd goes down to 4
    assert page.locator(f"select[name=rank_{last}]").input_value() == "3"
    keys.press("ArrowDown")  # focus the chip now at rank 4
    swapped = page.evaluate("document.activeElement.dataset.sampleId")
    keys.press("t")  # tie it with the chip above (rank 3)
    assert page.locator(f"select[name=rank_{swapped}]").input_value() == "3"
    keys.press("f")
    keys.press("Space")  # first flag: unsafe
    keys.press("Escape")
    keys.press("Enter")
    page.wait_for_selector("text=Nothing left to rank")

    rankings = list(Ranking.objects.filter(labeler=labeler).order_by("id"))
    assert len(rankings) == 2
    assert PairwiseComparison.objects.filter(ranking=rankings[0]).count() == 5  # C(4,2) - 1 tie
    assert PairwiseComparison.objects.filter(ranking=rankings[1]).count() == 5
    tiers = {e.sample_id: e.tier for e in rankings[1].entries.all()}
    assert tiers[int(last)] == tiers[int(swapped)] == 2
    assert rankings[1].entries.get(sample_id=int(swapped)).flags == ["unsafe"]
    assert rankings[0].time_spent_ms > 0 and rankings[1].time_spent_ms > 0


def test_xss_payloads_stay_inert_in_chromium(browser_page, live_server, make_user):
    page, labeler = browser_page, make_user("eve")
    _project("xss", labeler, [(XSS[0] + XSS[3] + XSS[4], XSS[:3]), (XSS[5], XSS[3:])], guidelines="\n\n".join(XSS))
    Prompt.objects.filter(project__slug="xss").update(
        messages=[{"role": "user", "content": XSS[3]}, {"role": "assistant", "content": XSS[4]},
                  {"role": "user<script>alert('role')</script>", "content": XSS[1]}])
    _login(page, live_server, "eve")
    dialogs, requests = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{live_server.url}/p/xss/label/")
    page.wait_for_load_state("networkidle")
    page.click("details.guidelines summary")
    page.wait_for_timeout(300)
    assert dialogs == []
    page.locator(".chip").first.focus()
    for rank in "123":  # rank the first prompt so the second one arrives through an htmx swap
        page.keyboard.press(rank)
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector(".notice:has-text('Ranking saved.')")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    assert dialogs == []
    allowed = (f"{live_server.url}/p/xss/label/", f"{live_server.url}/static/", f"{live_server.url}/assignments/")
    assert [url for url in requests if not url.startswith(allowed)] == []
    assert Ranking.objects.filter(labeler=labeler).count() == 1
    assert page.locator("text=<script>alert('script')</script>").count() >= 1  # shown as text
    assert page.evaluate("document.querySelectorAll('.untrusted img, .untrusted script, .untrusted [hx-get]').length") == 0
