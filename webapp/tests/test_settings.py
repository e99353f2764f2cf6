import pytest
from django.conf import settings
from django.db import connection


def test_tests_use_postgres_when_it_answers():
    if settings.USING_POSTGRES:
        assert connection.vendor == "postgresql"
    else:
        assert connection.vendor == "sqlite"


@pytest.mark.django_db
def test_fixture_project_has_k_samples_per_prompt(make_project):
    project = make_project(k=3, prompts=2)
    assert all(p.samples.count() == 3 for p in project.prompts.all())
