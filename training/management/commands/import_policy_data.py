"""python manage.py import_policy_data --project SLUG FILE.jsonl

SFT demonstrations ({"prompt"|"messages", "response"}) and pool prompts ({"prompt"|"messages"}), see
``training.policy_data``. Validated first; nothing is written on a bad line; re-importing writes nothing.
"""
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project
from training.policy_data import policy_data_import


class Command(BaseCommand):
    help = "Import SFT demonstrations and pool prompts from JSONL."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("file")

    def handle(self, *args, **o) -> None:
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"No project {o['project']!r}.")
        try:
            with open(o["file"], "rb") as f:
                result = policy_data_import(project=project, lines=f, source=o["file"])
        except OSError as error:
            raise CommandError(str(error)) from error
        except InvalidInput as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"{result['lines']} lines: {result['demonstrations']} new demonstrations, "
                          f"{result['pool_prompts']} new pool prompts")
