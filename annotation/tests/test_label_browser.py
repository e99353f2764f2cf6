"""Real Chromium (Playwright), the labelling page as a labeler uses it: every order of K=4 typed in at most
6 keys, a tie typed with `=`, skipping by keyboard alone, and the page on a 390-px phone."""
import itertools
import os

import pytest

from annotation.models import Assignment, PairwiseComparison, Ranking
from annotation.services import ranking_tiers
from annotation.tests.test_browser import _login, _project

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
SHOTS = os.environ.get("LABEL_SCREENSHOTS")  # a folder to keep the screenshots in, when set


def _letters(page) -> dict[str, int]:
    """Letter shown on each chip → its sample id."""
    return page.evaluate("Object.fromEntries([...document.querySelectorAll('.chip')].map("
                         "c => [c.querySelector('.chip-letter').textContent.trim(), Number(c.dataset.sampleId)]))")


def _wait_for_next(page, action: str) -> None:
    page.wait_for_function("a => { const f = document.querySelector('#rank-form'); return !f || f.getAttribute('action') !== a; }",
                           arg=action)


def test_every_order_of_four_in_at_most_six_keys(browser_page, live_server, make_user):
    page, labeler = browser_page, make_user("kim")
    orders = list(itertools.permutations("ABCD"))
    _project("keys", labeler, [(f"Q{i}?", [f"answer {i}.{j}" for j in range(4)]) for i in range(len(orders) + 1)])
    _login(page, live_server, "kim")
    page.goto(f"{live_server.url}/p/keys/label/")
    expected = {}
    for n, order in enumerate(orders):
        page.wait_for_function("() => document.activeElement.classList.contains('chip')")
        action, letters = page.locator("#rank-form").get_attribute("action"), _letters(page)
        keys = list(order[:3]) if n % 2 else list(order)  # every other order leaves the last one implied
        keys.append("Enter")
        assert len(keys) <= 6
        for key in keys:
            page.keyboard.press(key.lower() if n % 3 and len(key) == 1 else key)  # lower and upper case letters both work
        _wait_for_next(page, action)
        expected[int(action.split("/")[2])] = [[letters[letter]] for letter in order]
    # a tie: `B = D A C Enter` puts B and D together at rank 1 (6 keys)
    page.wait_for_function("() => document.activeElement.classList.contains('chip')")
    action, letters = page.locator("#rank-form").get_attribute("action"), _letters(page)
    for key in ["b", "=", "d", "a", "c", "Enter"]:
        page.keyboard.press(key)
    _wait_for_next(page, action)
    page.wait_for_selector("text=Nothing left to rank")

    for assignment_id, tiers in expected.items():
        ranking = Ranking.objects.get(assignment_id=assignment_id)
        assert ranking_tiers(ranking=ranking) == tiers, f"assignment {assignment_id}"
        pairs = {(p.chosen_id, p.rejected_id) for p in ranking.pairs.all()}
        assert pairs == {(a[0], b[0]) for a, b in itertools.combinations(tiers, 2)}
    tied = Ranking.objects.get(assignment_id=int(action.split("/")[2]))
    stored = ranking_tiers(ranking=tied)
    assert sorted(stored[0]) == sorted([letters["B"], letters["D"]]) and stored[1:] == [[letters["A"]], [letters["C"]]]
    assert PairwiseComparison.objects.filter(ranking=tied).count() == 5  # C(4,2) minus the tie


def test_skip_by_keyboard_with_a_reason_and_without(browser_page, live_server, make_user):
    page, labeler = browser_page, make_user("sam")
    _project("skips", labeler, [(f"Q{i}?", [f"answer {i}.{j}" for j in range(3)]) for i in range(3)])
    _login(page, live_server, "sam")
    page.goto(f"{live_server.url}/p/skips/label/")
    keys = page.keyboard
    page.wait_for_function("() => document.activeElement.classList.contains('chip')")
    for key in ["a", "b", "Enter"]:  # first prompt ranked: the green notice appears
        keys.press(key)
    page.wait_for_selector(".notice:has-text('Ranking saved.')")
    page.wait_for_function("() => document.activeElement.classList.contains('chip')")
    first = page.locator("#rank-form").get_attribute("action")

    keys.press("s")  # opens the panel and puts focus on the reason
    assert page.evaluate("document.querySelector('#skip-panel').open")
    assert page.evaluate("document.activeElement.name") == "reason"
    keys.press("Enter")  # no reason chosen: a message in place of the notice, focus stays in the panel
    page.wait_for_selector("#skip-error .error")
    assert "reason" in page.locator("#skip-error").inner_text().lower()
    assert page.locator("#notice-slot").inner_text() == page.locator("#skip-error").inner_text()
    assert page.locator(".notice").count() == 0  # "Ranking saved." is gone
    assert page.evaluate("document.querySelector('#skip-panel').contains(document.activeElement)")
    assert Assignment.objects.filter(labeler=labeler, status=Assignment.Status.SKIPPED).count() == 0

    keys.press("ArrowDown")  # choose "I cannot judge this topic" with the keyboard, Enter skips
    assert page.evaluate("document.activeElement.value") == "cannot_judge"
    keys.press("Enter")
    page.wait_for_selector(".notice:has-text('Prompt skipped.')")
    assert page.locator("#rank-form").get_attribute("action") != first
    skipped = Assignment.objects.get(labeler=labeler, status=Assignment.Status.SKIPPED)
    assert skipped.skip_reason == "I cannot judge this topic" and skipped.pk == int(first.split("/")[2])


PHONE_ANSWERS = [
    "Reverse in place:\n\n```python\nnumbers = [1, 2, 3]; numbers.reverse(); print(numbers)  # " + "x" * 160 + "\n```",
    "Use `numbers.reverse()` or *slicing*: `numbers[::-1]` gives a copy. " * 6,
    "A long word: " + "supercalifragilistic" * 12,
    "| a | b |\n| --- | --- |\n| " + "wide cell " * 30 + " | 2 |",
]


def test_phone_layout_fits_and_the_board_follows_the_responses(browser_page, live_server, make_user):
    page, labeler = browser_page, make_user("pia")
    _project("phone", labeler, [("How do I reverse a list?", PHONE_ANSWERS)])
    page.set_viewport_size({"width": 390, "height": 844})
    _login(page, live_server, "pia")
    page.goto(f"{live_server.url}/p/phone/label/")
    page.wait_for_selector(".chip")
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no code block widens the page
    assert page.evaluate("document.body.scrollWidth") <= 390
    gap = page.evaluate("""() => {
        const cards = document.querySelectorAll('.response');
        return document.querySelector('#board').getBoundingClientRect().top - cards[cards.length - 1].getBoundingClientRect().bottom;
    }""")
    assert gap <= 844, f"the board starts {gap} px below the last response"
    submit = page.locator("#submit-ranking").bounding_box()
    last_card = page.locator(".response").last.bounding_box()
    assert submit["y"] - (last_card["y"] + last_card["height"]) <= 844  # submit is within a screen, too
    small = page.evaluate("""() => [...document.querySelectorAll(
            '.chip, #label-area select, #label-area button, #label-area summary, #label-area .flags label, #label-area .skip input')]
        .filter(el => el.offsetParent !== null)
        .map(el => [el.className || el.tagName, el.getBoundingClientRect().height])
        .filter(([, h]) => h < 44)""")
    assert small == [], f"touch targets under 44 px: {small}"
    assert not page.evaluate("document.querySelector('details.legend').open")  # the key legend is folded away
    # ranking by touch still works: the rank selects of the cards
    for i, select in enumerate(page.locator(".response select").all()):
        select.select_option(str(i + 1))
    page.locator("#submit-ranking").click()
    page.wait_for_selector("text=Nothing left to rank")
    assert Ranking.objects.filter(labeler=labeler).count() == 1


def test_comment_all_bad_then_edit_and_withdraw_the_last_ranking(browser_page, live_server, make_user):
    page, labeler = browser_page, make_user("eda")
    _project("edits", labeler, [(f"Q{i}?", [f"**answer** {i}.{j} " + "long text " * 80 for j in range(3)]) for i in range(3)])
    _login(page, live_server, "eda")
    page.goto(f"{live_server.url}/p/edits/label/")
    keys = page.keyboard
    page.wait_for_function("() => document.activeElement.classList.contains('chip')")
    letters, action = _letters(page), page.locator("#rank-form").get_attribute("action")
    assert page.locator("#edit-last").count() == 0  # nothing to correct yet

    keys.press("w")  # side by side: responses A and B on one row
    assert "compare" in page.locator("#label-area").get_attribute("class")
    a, b = page.locator(".response").nth(0).bounding_box(), page.locator(".response").nth(1).bounding_box()
    assert a["y"] == b["y"] and b["x"] > a["x"] + a["width"] - 1
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "compare.png"))
    keys.press("w")
    assert "compare" not in page.locator("#label-area").get_attribute("class")

    for key in ["c", "a", "b"]:
        keys.press(key)
    page.click("details.comment summary")
    page.fill("textarea[name=comment]", "<b>meh</b> all weak")
    page.check("input[name=all_bad]")
    page.click("#submit-ranking")
    _wait_for_next(page, action)
    first_id = int(action.split("/")[2])
    ranking = Ranking.objects.get(assignment_id=first_id)
    assert (ranking.comment, ranking.all_bad) == ("<b>meh</b> all weak", True)
    assert ranking_tiers(ranking=ranking) == [[letters["C"]], [letters["A"]], [letters["B"]]]
    slots = type(ranking.prompt).objects.get(pk=ranking.prompt_id).slots_taken

    page.wait_for_function("() => document.activeElement.classList.contains('chip')")
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "saved.png"))
    keys.press("u")  # undo / edit last: the stored ranking comes back on the board
    page.wait_for_selector(".editing-banner")
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "edit.png"), full_page=True)
    assert page.locator("#rank-form").get_attribute("action") == f"/assignments/{first_id}/edit/"
    assert page.locator(f"select[name=rank_{letters['C']}]").input_value() == "1"
    assert page.locator("textarea[name=comment]").input_value() == "<b>meh</b> all weak"
    assert page.locator(".extras b").count() == 0 and page.locator("input[name=all_bad]").is_checked()
    page.locator(".chip").first.focus()
    for key in ["a", "=", "b", "Enter"]:  # typing on the full board starts a new order: A = B, C implied last
        keys.press(key)
    page.wait_for_selector(".notice:has-text('Ranking corrected.')")
    fixed = Ranking.objects.get(assignment_id=first_id)
    assert fixed.pk == ranking.pk
    assert [sorted(t) for t in ranking_tiers(ranking=fixed)] == [sorted([letters["A"], letters["B"]]), [letters["C"]]]
    assert PairwiseComparison.objects.filter(ranking=fixed).count() == 2
    assert type(fixed.prompt).objects.get(pk=fixed.prompt_id).slots_taken == slots  # counters unchanged

    page.click("#edit-last")
    page.wait_for_selector("#withdraw-form")
    page.click("#withdraw-form button")
    page.wait_for_selector(".notice:has-text('Ranking withdrawn')")
    assert not Ranking.objects.filter(pk=ranking.pk).exists()
    assert Assignment.objects.get(pk=first_id).status == Assignment.Status.SKIPPED
    assert page.locator("#edit-last").count() == 0  # nothing left to correct
