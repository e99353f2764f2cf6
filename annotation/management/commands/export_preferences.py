"""python manage.py export_preferences --project SLUG --format FORMAT [--file-format F] [--output FILE] [--round N]
[--sources human|ai|both|weighted|arena] [--include-arena] [--ai-weight W]."""
import contextlib
import os
import sys
import tempfile

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.exporters import FILE_FORMATS, FORMATS, export_preferences
from annotation.models import Project
from annotation.provenance import CHOICES, DEFAULT_AI_WEIGHT, DEFAULT_CHOICE, source_selection_parse


class Command(BaseCommand):
    help = "Export a project's preferences (pairs, conversational or rankings) as JSONL or Parquet; see docs/formats.md."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument("--file-format", choices=FILE_FORMATS, default="jsonl")
        parser.add_argument("--output", help="file to write (default: standard output)")
        parser.add_argument("--round", type=int, default=None, dest="round_number", help="only this round")
        parser.add_argument("--sources", choices=CHOICES, default=DEFAULT_CHOICE,
                            help="which rankings (default human: human, simulated, imported, gold-prompt rankings; "
                                 "ai; both; weighted; arena)")
        parser.add_argument("--include-arena", action="store_true", help="add arena votes to the chosen sources")
        parser.add_argument("--ai-weight", type=float, default=None,
                            help=f"with --sources weighted: AI pair weight factor in (0, 1] "
                                 f"(default {DEFAULT_AI_WEIGHT})")

    def handle(self, *args, project: str, fmt: str, file_format: str, output: str | None, round_number, **options):
        found = Project.objects.filter(slug=project).first()
        if found is None:
            raise CommandError(f"no project {project!r}")
        try:
            selection = source_selection_parse(choice=options["sources"], include_arena=options["include_arena"],
                                               ai_weight=options["ai_weight"])
            chunks = export_preferences(project=found, fmt=fmt, file_format=file_format, round_number=round_number,
                                        selection=selection)
        except InvalidInput as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"sources: {selection.label()}")
        if output is None:
            sink = getattr(self.stdout, "_out", sys.stdout)
            binary = getattr(sink, "buffer", None)
            for chunk in chunks:
                binary.write(chunk) if binary is not None else sink.write(chunk.decode("utf-8", "replace"))
            sink.flush()
            return
        # Write next to the target and rename at the end, so a failed export never leaves half a file behind.
        directory = os.path.dirname(os.path.abspath(output))
        fd, partial = tempfile.mkstemp(prefix=".export-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                size = sum(out.write(chunk) for chunk in chunks)
            os.chmod(partial, 0o644)  # mkstemp makes it private; an export is an ordinary file
            os.replace(partial, output)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        self.stderr.write(f"wrote {size} bytes of {fmt} ({file_format}) to {output}")
