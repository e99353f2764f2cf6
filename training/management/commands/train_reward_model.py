"""python manage.py train_reward_model --project SLUG [--base MODEL_DIR] [--config FILE.json] [--wait | --in-process]

Launches the same run as the browser button (``training.services.run_create``). With --wait it follows
the run with a progress bar and exits non-zero unless the run succeeds; when no Celery worker consumes the gpu queue it
says so within seconds (queueing nothing). --in-process runs the job in this process instead.
"""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project
from training.management.cli import (
    IN_PROCESS_HELP, WAIT_HELP, add_source_arguments, read_config, run_finish, source_selection_from, worker_require,
)
from training.models import TrainingRun
from training.selectors import base_model_default_for_reward
from training.services import run_create


class Command(BaseCommand):
    help = "Queue a reward-model run on the project's rankings (a Celery gpu worker trains it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--base", help="local model directory (default: the project's newest base model)")
        parser.add_argument("--config", help="JSON file of RewardConfig settings")
        parser.add_argument("--rounds", help="comma-separated round numbers (default: all)")
        add_source_arguments(parser)
        parser.add_argument("--wait", action="store_true", help="follow the run and fail unless it succeeds")
        parser.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
        parser.add_argument("--poll", type=float, default=1.0, help=WAIT_HELP)

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        config = read_config(options["config"])
        base_artifact = None
        if options["base"]:
            config["base_model"] = str(Path(options["base"]).expanduser().resolve())
        elif "base_model" not in config:
            base_artifact = base_model_default_for_reward(project=project)
            if base_artifact is None:
                raise CommandError("No --base given and the project has no base model: run build_tiny_models.")
        rounds = [int(r) for r in options["rounds"].split(",")] if options["rounds"] else None
        worker_require(options)
        try:
            run = run_create(project=project, kind=TrainingRun.Kind.REWARD, config=config,
                             base_artifact=base_artifact, rounds=rounds, sources=source_selection_from(options))
        except InvalidInput as error:
            raise CommandError(str(error)) from error
        snap = run.snapshot
        self.stdout.write(f"run {run.pk} queued: {snap.num_rankings} rankings, {snap.num_pairs} pairs, "
                          f"{snap.num_prompts} prompts (snapshot {snap.pk}; sources {_label(snap.filters)})")
        run_finish(run, options=options, stdout=self.stdout)


def _label(filters: dict) -> str:
    included = ", ".join(filters.get("included_sources") or [])
    weight = f", AI pairs x{filters['ai_weight']:g}" if filters.get("ai_weight") is not None else ""
    return f"{filters.get('sources')}: {included}{weight}"
