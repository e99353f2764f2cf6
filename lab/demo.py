"""The demo: users with each role and a `demo` project (K=4, overlap 2) imported from demo_data/.

`demo_seed()` is idempotent: users are created or their passwords reset, memberships ensured, the
demo file is imported through the same importer researchers use (a second import of the same bytes
writes nothing), and the tiny base models are built once (``training.services.base_models_ensure_tiny``).
Extend it by adding steps that return their own keys in the summary dict.
"""
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation.importers import import_samples_from_file
from annotation.models import Membership, Project

DEMO_FILE = Path(__file__).resolve().parent / "demo_data" / "demo.jsonl"
DEMO_SLUG = "demo"
DEMO_USERS = [  # (username, password, role in the demo project; None = superuser, member of nothing)
    ("admin", "demo-admin-pw", None),
    ("researcher", "demo-researcher-pw", Membership.Role.RESEARCHER),
    ("labeler1", "demo-labeler-pw", Membership.Role.LABELER),
    ("labeler2", "demo-labeler-pw", Membership.Role.LABELER),
]
DEMO_GUIDELINES = """\
Rank the responses **from best (1) to worst**. A good response is:

1. **Helpful**: it answers what was asked, completely.
2. **Honest**: it is factually correct; a confident wrong answer is worse than a short correct one.
3. **Harmless**: it gives no dangerous advice.

Put two responses in the **same rank** (a tie) only when you truly cannot prefer one. Flag a response
that is *unsafe*, *factually wrong* or *off-topic* in addition to ranking it. Some responses contain
HTML or code: judge what the text says, e.g.

```
<script>alert("hi")</script>
```

is shown as text and never runs. Skip a prompt only if you cannot judge it, and say why.
"""


def _demo_users() -> dict:
    User = get_user_model()
    users = {}
    for username, password, role in DEMO_USERS:
        user, _ = User.objects.get_or_create(username=username)
        user.is_superuser = user.is_staff = role is None
        if not user.check_password(password):  # leave a matching hash alone: re-seeding keeps sessions valid
            user.set_password(password)
        user.save()
        users[username] = (user, role)
    return users


def demo_seed(*, build_base_models: bool = True) -> dict:
    """Create or refresh the demo users and project; returns a summary for the command to print.

    ``build_base_models=False`` leaves the tiny base models out (tests that need only the rows)."""
    with transaction.atomic():
        users = _demo_users()
        project, created = Project.objects.get_or_create(
            slug=DEMO_SLUG,
            defaults={"name": "Demo: helpful answers", "k": 4, "overlap": 2, "guidelines": DEMO_GUIDELINES,
                      "created_by": users["researcher"][0]},
        )
        for user, role in users.values():
            if role is not None:
                Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    with DEMO_FILE.open("rb") as stream:
        result = import_samples_from_file(project_slug=DEMO_SLUG, stream=stream, source_name=DEMO_FILE.name)
    from training.policy_data import demo_policy_data_seed  # the story task of the policy loop (docs/loop.md)

    policy_data = demo_policy_data_seed(project=project)
    from training.services import base_models_ensure_tiny  # so "Launch" works on a fresh demo, browser only

    base_models, built = base_models_ensure_tiny(project=project) if build_base_models else ([], False)
    return {
        "policy_data": policy_data,
        "base_models": [(artifact.name, artifact.pk) for artifact in base_models],
        "base_models_built": built,
        "project": project.slug,
        "project_created": created,
        "round": result.round_number,
        "prompts": result.prompts,
        "samples": result.samples,
        "already_imported": result.already_imported,
        "logins": [(username, password) for username, password, _ in DEMO_USERS],
    }
