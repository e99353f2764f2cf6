"""Shared fixtures: users with roles and a small project with one open round."""
import pytest


@pytest.fixture
def make_user(db, django_user_model):
    counter = {"n": 0}

    def _make(username: str | None = None, **extra):
        counter["n"] += 1
        name = username or f"user{counter['n']}"
        return django_user_model.objects.create_user(username=name, password="pw-" + name, **extra)

    return _make


@pytest.fixture
def make_project(db):
    from annotation.models import Membership, Project, Prompt, Round, Sample
    import hashlib

    def _make(*, slug="demo", k=4, overlap=1, prompts=3, labelers=(), researchers=()):
        project = Project.objects.create(slug=slug, name=slug.title(), k=k, overlap=overlap, guidelines="Be *kind*.")
        rnd = Round.objects.create(project=project, number=1, status=Round.Status.OPEN)
        for i in range(prompts):
            prompt = Prompt.objects.create(
                project=project, round=rnd, messages=[{"role": "user", "content": f"Question {i}?"}]
            )
            for j in range(k):
                text = f"Answer {j} to question {i}."
                Sample.objects.create(
                    prompt=prompt, text=text, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                    position=j, model_name="fixture",
                )
        for user in labelers:
            Membership.objects.create(project=project, user=user, role=Membership.Role.LABELER)
        for user in researchers:
            Membership.objects.create(project=project, user=user, role=Membership.Role.RESEARCHER)
        return project

    return _make


CHROMIUM = "/usr/bin/chromium"  # Debian's package; `playwright install` cannot download here


def pytest_collection_modifyitems(config, items):
    """Tests marked ``browser`` need Debian's Chromium: skipped without it on a user's machine, never in CI."""
    import os
    import shutil

    if shutil.which(CHROMIUM) or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="needs Debian's Chromium at /usr/bin/chromium (never skipped in CI)")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)


@pytest.fixture
def browser_page():
    """A page in headless Debian Chromium driven by Playwright's sync API (10 s default timeout)."""
    import os

    from playwright import sync_api  # a dev requirement: missing, the test fails rather than skips

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(10_000)
        yield page
        browser.close()
