"""Fixtures for the annotation tests: leases, rankings and database figures."""
import pytest
from django.db import connection


@pytest.fixture
def db_counts():
    """Row counts of every table a ranking write touches, to assert that a rejected input wrote nothing."""
    from annotation.models import Assignment, PairwiseComparison, Ranking, RankingEntry

    def _counts() -> dict:
        return {
            "rankings": Ranking.objects.count(),
            "entries": RankingEntry.objects.count(),
            "pairs": PairwiseComparison.objects.count(),
            "submitted": Assignment.objects.filter(status=Assignment.Status.SUBMITTED).count(),
        }

    return _counts


@pytest.fixture
def leased(make_user, make_project):
    """A project (K=4, overlap 1, 3 prompts), a labeler, and the labeler's first lease."""
    from annotation.services import assignment_next_for_labeler

    labeler = make_user("alice")
    project = make_project(slug="leased", k=4, overlap=1, prompts=3, labelers=[labeler])
    assignment = assignment_next_for_labeler(project=project, labeler=labeler)
    return project, labeler, assignment


@pytest.fixture
def on_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks and triggers); this run uses " + connection.vendor)
