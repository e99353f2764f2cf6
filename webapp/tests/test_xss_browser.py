"""Stored XSS in real Chromium on the pages annotation/tests/test_browser.py does not cover: home, project
page and guidelines, the browsable API, training pages (run config, error and log; artifact names) and
Django admin list and change pages (prompts, samples, skip reasons, flags, runs). Every payload must stay
inert: no dialog opens, no request leaves for a probe URL, no javascript: link or event handler exists,
and every page carries the CSP that forbids inline script."""
import hashlib
import os

import pytest
from django.db import transaction

from annotation.models import Assignment, Membership, Project, Prompt, Ranking, RankingEntry, Round, Sample
from training.models import MetricPoint, ModelArtifact, TrainingRun

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def payloads(tag: str) -> str:
    """Every vector at once, each with its own probe URL so a fired request names the field it came from."""
    return (
        f"<script>alert('{tag}-script')</script>"
        f"<img src=/xss-probe/{tag}-img onerror=\"alert('{tag}-img')\">"
        f"[click](javascript:alert('{tag}-link')) <a href=\"javascript:alert('{tag}-a')\">a</a>"
        f"</script><script>alert('{tag}-breakout')</script>"
        f"<div hx-get=\"/xss-probe/{tag}-htmx\" hx-trigger=\"load\">htmx</div>"
        f"<span data-hx-get=\"/xss-probe/{tag}-datahx\" data-hx-trigger=\"load\">bait</span>"
        f"<svg onload=\"alert('{tag}-svg')\"></svg><iframe src=\"/xss-probe/{tag}-iframe\"></iframe>"
        f"\"><body onload=alert('{tag}-attr')>'"
    )



@pytest.fixture
def poisoned(django_user_model):
    admin = django_user_model.objects.create_user("boss", password="pw-boss", is_staff=True, is_superuser=True)
    labeler = django_user_model.objects.create_user("lab", password="pw-lab")
    project = Project.objects.create(slug="xss", name=payloads("projname")[:200], k=2, overlap=1,
                                     guidelines=payloads("guidelines"))
    Membership.objects.create(project=project, user=labeler)
    rnd = Round.objects.create(project=project, number=1, source=payloads("roundsrc")[:200])
    prompt = Prompt.objects.create(project=project, round=rnd, external_id=payloads("extid")[:200],
                                   messages=[{"role": "user", "content": payloads("prompt")}])
    samples = [Sample.objects.create(prompt=prompt, position=i, text=payloads(f"sample{i}"), model_name=payloads("model")[:200],
                                     text_sha256=hashlib.sha256(f"{i}".encode()).hexdigest()) for i in range(2)]
    assignment = Assignment.objects.create(prompt=prompt, labeler=labeler, status=Assignment.Status.SKIPPED,
                                           shown_order=[s.pk for s in samples], skip_reason=payloads("skip")[:500],
                                           expires_at="2030-01-01T00:00:00Z")
    with transaction.atomic():  # the deferred coverage trigger checks the entries at commit
        ranking = Ranking.objects.create(prompt=prompt, labeler=admin, source=Ranking.Source.HUMAN)
        for tier, sample in enumerate(samples):  # flags written around the service, as a hostile import might
            RankingEntry.objects.create(ranking=ranking, sample=sample, tier=tier, shown_position=tier,
                                        flags=[payloads(f"flag{tier}")])
    run = TrainingRun.objects.create(project=project, kind=TrainingRun.Kind.REWARD, status=TrainingRun.Status.FAILED,
                                     config={"note": payloads("config"), payloads("cfgkey")[:80]: 1},
                                     error=payloads("error"), log_tail=payloads("log"), worker=payloads("worker")[:200])
    MetricPoint.objects.create(run=run, step=1, values={"loss": 0.5, payloads("metric")[:60]: 1.0})
    artifact = ModelArtifact.objects.create(project=project, kind=ModelArtifact.Kind.REWARD, name=payloads("artifact")[:200],
                                            path="nowhere", base_model=payloads("base")[:500], run=run,
                                            metrics={"acc": payloads("artmetric")})
    return {"project": project, "prompt": prompt, "sample": samples[0], "assignment": assignment, "ranking": ranking,
            "run": run, "artifact": artifact}


def _login(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def _assert_inert(page, live_server, path: str, dialogs: list, requests: list) -> None:
    response = page.goto(f"{live_server.url}{path}")
    assert response.status < 500, path
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp, path
    page.wait_for_load_state("networkidle")
    for summary in page.locator("details summary").all()[:5]:  # open collapsed guidelines and panels
        if summary.is_visible():
            summary.click()
    page.wait_for_timeout(250)
    assert dialogs == [], (path, dialogs)
    assert [url for url in requests if "xss-probe" in url or not url.startswith(live_server.url)] == [], path
    hostile = page.evaluate("""() => {
        const all = [...document.querySelectorAll('*')];
        return {
          jsLinks: [...document.querySelectorAll('a[href]')].filter(a => a.href.trim().toLowerCase().startsWith('javascript:')).length,
          handlers: all.filter(el => [...el.attributes].some(a => a.name.startsWith('on'))).length,
          inlineScripts: [...document.scripts].filter(s => !s.src && (!s.type || s.type.includes('javascript')) && s.textContent.includes('alert')).length,
          // a probe URL in a live attribute (src, hx-get, action...); admin filter links (?field=...) only quote it
          probes: all.filter(el => [...el.attributes].some(a => a.value.includes('xss-probe') && a.name !== 'value'
                                                            && !(a.name === 'href' && a.value.startsWith('?')))).length,
        };
    }""")
    assert hostile == {"jsLinks": 0, "handlers": 0, "inlineScripts": 0, "probes": 0}, (path, hostile)


def test_stored_payloads_are_inert_on_every_page(browser_page, live_server, poisoned, tmp_path):
    page, dialogs, requests = browser_page, [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    _login(page, live_server, "boss")
    p = poisoned
    paths = [
        "/", "/p/xss/", "/api/projects/", "/api/projects/xss/", "/api/projects/xss/rankings/",
        "/training/projects/xss/runs/", f"/training/runs/{p['run'].pk}/", f"/training/artifacts/{p['artifact'].pk}/",
        f"/api/runs/{p['run'].pk}/", f"/api/artifacts/{p['artifact'].pk}/",
        f"/admin/annotation/project/{p['project'].pk}/change/", "/admin/annotation/project/",
        f"/admin/annotation/prompt/{p['prompt'].pk}/change/", "/admin/annotation/prompt/",
        f"/admin/annotation/sample/{p['sample'].pk}/change/", "/admin/annotation/sample/",
        f"/admin/annotation/assignment/{p['assignment'].pk}/change/", "/admin/annotation/assignment/",
        f"/admin/annotation/ranking/{p['ranking'].pk}/change/", "/admin/annotation/rankingentry/",
        f"/admin/training/trainingrun/{p['run'].pk}/change/", "/admin/training/trainingrun/",
        f"/admin/training/modelartifact/{p['artifact'].pk}/change/", "/admin/training/metricpoint/",
    ]
    for path in paths:
        _assert_inert(page, live_server, path, dialogs, requests)
    page.goto(f"{live_server.url}/admin/annotation/assignment/{p['assignment'].pk}/change/")
    assert "skip-script" in page.content()  # the skip reason is there, as text
    page.goto(f"{live_server.url}/training/runs/{p['run'].pk}/")
    assert page.locator("pre.run-error").inner_text().startswith("<script>alert('error-script')")


def test_labeler_sees_payloads_only_as_text(browser_page, live_server, poisoned):
    page, dialogs, requests = browser_page, [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    _login(page, live_server, "lab")
    for path in ("/", "/p/xss/", "/api/projects/xss/", "/training/projects/xss/runs/", f"/training/runs/{poisoned['run'].pk}/"):
        _assert_inert(page, live_server, path, dialogs, requests)
    page.goto(f"{live_server.url}/p/xss/")
    assert "guidelines-script" in page.locator(".prose").first.inner_text() or page.locator(".prose img").count() == 0
