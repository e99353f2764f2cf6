"""python manage.py build_tiny_models --project SLUG: offline base models trained on the project's texts."""
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project
from training.artifact_paths import artifact_dir
from training.services import base_models_build_tiny


class Command(BaseCommand):
    help = "Build a tokenizer from the project's texts plus a tiny reward model and causal LM; register them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--vocab-size", type=int, default=512)
        parser.add_argument("--hidden", type=int, default=64)
        parser.add_argument("--layers", type=int, default=2)
        parser.add_argument("--heads", type=int, default=4)
        parser.add_argument("--max-positions", type=int, default=256)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        try:
            artifacts = base_models_build_tiny(
                project=project, vocab_size=options["vocab_size"], hidden=options["hidden"],
                layers=options["layers"], heads=options["heads"], max_positions=options["max_positions"],
                seed=options["seed"],
            )
        except (InvalidInput, ValueError) as error:
            raise CommandError(str(error)) from error
        for artifact in artifacts:
            self.stdout.write(f"{artifact.name}: artifact {artifact.pk} at {artifact_dir(artifact=artifact)}")
