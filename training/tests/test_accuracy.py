"""Held-out accuracy with its 95% Wilson interval everywhere it is shown, and a warning when the held-out set is
too small: the pure function, the run, artifact, runs and lineage pages, the API and the command line."""
import pytest
from django.test import Client
from django.urls import reverse

from training.accuracy import accuracy_text, accuracy_with_interval, wilson_interval
from training.models import ModelArtifact, RoundReport, TrainingRun

SMALL = {"eval_accuracy": 0.2222222238779068, "eval_pairs": 18, "eval_loss": 0.7123456789}


@pytest.mark.parametrize("accuracy, n, low, high", [
    (0.5, 100, 0.4038, 0.5962),   # textbook values (Wilson 1927; Agresti & Coull 1998)
    (0.0, 10, 0.0, 0.2775),
    (1.0, 10, 0.7225, 1.0),
    (4 / 18, 18, 0.0900, 0.4521),  # the demo's 0.222 on 18 pairs
])
def test_wilson_interval_matches_known_values(accuracy, n, low, high):
    got = wilson_interval(accuracy, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_small_held_out_sets_are_flagged_and_large_ones_are_not():
    small, large = accuracy_with_interval(4 / 18, 18), accuracy_with_interval(0.8, 1000)
    assert small["too_small"] and "only 18 held-out pairs" in small["warning"] and "0.09–0.45" in small["warning"]
    assert not large["too_small"] and large["warning"] == ""
    assert accuracy_text(small) == "0.222 (95% CI 0.09–0.45, 18 pairs)"
    assert accuracy_with_interval(0.9, None)["too_small"]  # pairs unknown: say so rather than look sure
    assert accuracy_with_interval(None, 10) is None and accuracy_with_interval(float("nan"), 10) is None


@pytest.fixture
def trained(ranked, model_dir, artifact_root):
    project, researcher, labeler = ranked
    run = TrainingRun.objects.create(project=project, kind="reward", status="succeeded", config={"base_model": "x"},
                                     summary={"final_eval": {"accuracy": 0.2222222238779068, "pairs": 18}})
    artifact = ModelArtifact.objects.create(project=project, kind="reward", name="rm", path=str(model_dir), run=run,
                                            metrics=SMALL)
    c = Client()
    c.force_login(researcher)
    return project, run, artifact, c


@pytest.mark.django_db
def test_pages_show_the_interval_the_warning_and_formatted_numbers(trained):
    project, run, artifact, c = trained
    artifact_page = c.get(reverse("training:artifact_detail", args=[artifact.pk])).content.decode()
    assert "0.222 (95% CI 0.09–0.45, 18 pairs)" in artifact_page and "only 18 held-out pairs" in artifact_page
    assert "0.2222222238779068" not in artifact_page and "0.7123" in artifact_page  # floats formatted
    run_page = c.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "0.222 (95% CI 0.09–0.45, 18 pairs)" in run_page and "only 18 held-out pairs" in run_page
    runs_page = c.get(reverse("training:project_runs", args=[project.slug])).content.decode()
    assert "0.222 (95% CI 0.09–0.45, 18 pairs)" in runs_page and "too few held-out pairs" in runs_page

    rnd = project.rounds.get()
    RoundReport.objects.create(round=rnd, metrics={"rm_accuracy": 0.8, "rm_eval_pairs": 1000})
    lineage = c.get(reverse("training:project_lineage", args=[project.slug])).content.decode()
    assert "0.800 (95% CI 0.77–0.82, 1000 pairs)" in lineage


@pytest.mark.django_db
def test_api_fields_carry_the_interval(trained):
    project, run, artifact, c = trained
    (listed,) = c.get(f"/api/projects/{project.slug}/artifacts/").json()
    assert listed["held_out_accuracy"]["ci_low"] == pytest.approx(0.09, abs=1e-3)
    assert listed["held_out_accuracy"]["too_small"] is True
    detail = c.get(f"/api/runs/{run.pk}/").json()["held_out_accuracy"]
    assert (detail["pairs"], detail["ci_high"]) == (18, pytest.approx(0.4521, abs=1e-3))
    RoundReport.objects.create(round=project.rounds.get(), metrics={"rm_accuracy": 0.8, "rm_eval_pairs": 1000})
    (round_json,) = c.get(f"/api/projects/{project.slug}/lineage/").json()
    assert round_json["rm_accuracy"]["ci_low"] == pytest.approx(0.7741, abs=1e-3)
    schema = c.get("/api/schema/").content.decode()
    assert "held_out_accuracy" in schema and "Wilson" in schema


@pytest.mark.django_db
def test_the_command_line_prints_the_interval_and_the_warning(trained, capsys):
    from io import StringIO

    from training.management.cli import run_report

    out = StringIO()
    run_report(trained[1], stdout=out)
    text = out.getvalue()
    assert "held-out accuracy 0.222 (95% CI 0.09–0.45, 18 pairs)" in text and "warning: only 18" in text
