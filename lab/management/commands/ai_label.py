"""python manage.py ai_label --project SLUG --name NAME --kind utility|reward_model|llm_judge --spec SPEC
[--tie-threshold T] [--max-prompts N]: add (or update) an AI labeler and let it rank its queue."""
from django.core.management.base import BaseCommand, CommandError

from lab.ai_labelers.services import ai_labeler_create, ai_labeler_run
from annotation.errors import InvalidInput
from annotation.models import Project
from annotation.quality.models import AILabeler


class Command(BaseCommand):
    help = "Add an AI labeler (rule-based scorer, reward model artifact or local LLM judge) and run it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--name", required=True,
                            help="The labeler is the user ai-NAME@PROJECT (names are per project).")
        parser.add_argument("--kind", required=True, choices=AILabeler.Kind.values)
        parser.add_argument("--spec", required=True,
                            help="a registered utility name (utility; RLHF_HOOKS), a reward artifact id "
                                 "(reward_model), a policy/base artifact id or a directory under RLHF_MODEL_ROOTS "
                                 "(llm_judge).")
        parser.add_argument("--tie-threshold", type=float, default=0.0)
        parser.add_argument("--max-prompts", type=int, default=None)

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {options['project']!r}")
        try:
            labeler = ai_labeler_create(project=project, name=options["name"], kind=options["kind"],
                                        spec=options["spec"], tie_threshold=options["tie_threshold"])
            result = ai_labeler_run(labeler=labeler, max_prompts=options["max_prompts"])
        except InvalidInput as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{result['labeler']} ranked {result['rankings']} prompts ({result['pairs']} pairs, "
                          f"source ai). See: python manage.py quality_report --project {project.slug}")
        if result.get("reason"):
            self.stdout.write(f"nothing more to rank: {result['reason']}")
