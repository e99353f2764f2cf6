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
