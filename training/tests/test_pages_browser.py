"""Real Chromium (Playwright) on the researcher's pages: the run page fits a 1360-px window with a long
base-model path, its charts have whole-number steps and a legend with values (not "--"); the quality page's
agreement chart of one day spans days, not years."""
import os
from datetime import datetime, timezone

import pytest

from annotation.models import Membership
from training.models import MetricPoint, TrainingRun
from training.tests.conftest import rank_all

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
LONG_PATH = "/var/lib/rlhf/artifacts/" + "averyverylongdirectorynamewithoutanybreaks_" * 6 + "model"


def _login(page, live_server, user) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "pw-" + user.username)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def test_run_page_fits_the_window_and_its_charts_read_well(browser_page, live_server, ranked):
    project, researcher, _ = ranked
    run = TrainingRun.objects.create(project=project, kind="reward", status="succeeded", step=3, total_steps=3,
                                     config={"base_model": LONG_PATH, "learning_rate": 5e-05}, worker="gpu@box")
    for step in (1, 2, 3):
        MetricPoint.objects.create(run=run, step=step, split="train",
                                   values={"loss": 0.7 - step / 100, "accuracy": 0.5})
    MetricPoint.objects.create(run=run, step=3, split="eval", values={"loss": 0.69, "accuracy": 0.2222222238779068})
    page = browser_page
    _login(page, live_server, researcher)
    page.goto(f"{live_server.url}/training/runs/{run.pk}/")
    page.wait_for_function("() => document.querySelector('[data-chart=loss]')._uplot !== undefined")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1360
    assert "worker gpu@box" in page.locator("#status-card").inner_text()
    ticks = page.evaluate("document.querySelector('[data-chart=loss]')._uplot.axes[0]._values")
    assert ticks and all(t == "" or t.isdigit() for t in ticks), ticks
    legend = page.locator("[data-chart=accuracy] .u-legend").inner_text()
    assert "--" not in legend and "step" in legend and "0.2222" in legend, legend


def test_quality_chart_of_one_day_spans_days(browser_page, live_server, ranked, make_user):
    project, researcher, labeler = ranked
    second = make_user("lena")
    Membership.objects.create(project=project, user=second, role="labeler")
    rank_all(project, second, best_first=False)  # two rankings per prompt, all today: one point on the chart
    page = browser_page
    _login(page, live_server, researcher)
    page.goto(f"{live_server.url}/p/{project.slug}/quality/")
    page.wait_for_function("() => document.getElementById('agreement-chart')._uplot !== undefined")
    x_min, x_max = page.evaluate("(() => { const s = document.getElementById('agreement-chart')._uplot.scales.x;"
                                 " return [s.min, s.max]; })()")
    span_days = (x_max - x_min) / 86400
    assert 1 <= span_days <= 3, span_days
    assert datetime.fromtimestamp(x_max, timezone.utc).year == datetime.now(timezone.utc).year
