"""python manage.py import_samples --project SLUG FILE [--round N]: import a JSONL file as a new round."""
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import ImportRejected
from annotation.importers import ImportFileRejected, import_samples_from_file


class Command(BaseCommand):
    help = "Import prompts and responses (or hh-rlhf chosen/rejected pairs) from a JSONL file into a project."

    def add_arguments(self, parser):
        parser.add_argument("file", help="JSONL file; see docs/formats.md")
        parser.add_argument("--project", required=True, help="project slug; created if it does not exist")
        parser.add_argument("--round", type=int, default=None, dest="round_number", help="round number (default: next)")

    def handle(self, *args, file: str, project: str, round_number: int | None, **options):
        try:
            with open(file, "rb") as stream:
                result = import_samples_from_file(
                    project_slug=project, stream=stream, source_name=file.rsplit("/", 1)[-1], round_number=round_number
                )
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        except ImportFileRejected as exc:
            lines = [f"{location}: {message}" for location, message in exc.problems]
            raise CommandError(f"{file} was rejected; nothing was imported.\n" + "\n".join(lines)) from None
        except ImportRejected as exc:
            raise CommandError(f"{file} was rejected; nothing was imported.\n{exc}") from None
        verb = "was already imported as" if result.already_imported else "imported into"
        created = " (new project)" if result.created_project else ""
        self.stdout.write(
            f"{file} {verb} project {result.project_slug}{created}, round {result.round_number}: "
            f"{result.prompts} prompts, {result.samples} samples, {result.rankings} rankings, {result.pairs} pairs"
        )
