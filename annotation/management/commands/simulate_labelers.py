"""python manage.py simulate_labelers --project SLUG --labelers N [--utility module:function] [--noise SIGMA]
[--tie-threshold T] [--seed S] [--max-prompts M]: scripted labelers rank the project's open prompts."""
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.errors import InvalidInput
from annotation.models import Project
from annotation.selectors import project_progress
from annotation.simulation import labelers_simulate
from annotation.utility import load_utility


class Command(BaseCommand):
    help = "Rank open prompts with N scripted labelers (utility + Gaussian noise, ties within a threshold)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--labelers", type=int, required=True, help="Number of simulated labelers.")
        parser.add_argument("--utility", default=None, help=(
            "a registered utility name (e.g. default, demo) or 'module:function' scoring (messages, text) -> float."))
        parser.add_argument("--noise", type=float, default=0.1, help="Std dev of the Gaussian noise (default 0.1).")
        parser.add_argument("--tie-threshold", type=float, default=0.0, help="Tie scores this close (default 0).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-prompts", type=int, default=None, help="Stop after this many rankings.")

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {options['project']!r}")
        try:
            utility = load_utility(options["utility"]) if options["utility"] else None
            total = project_progress(project=project)["open_slots"]
            if options["max_prompts"] is not None:
                total = min(total, max(options["max_prompts"], 0))
            with tqdm(total=total, desc="rankings", unit="ranking", disable=options["verbosity"] < 1) as bar:
                summary = labelers_simulate(
                    project=project, num_labelers=options["labelers"], utility=utility,
                    noise=options["noise"], tie_threshold=options["tie_threshold"], seed=options["seed"],
                    max_prompts=options["max_prompts"], on_ranking=lambda: bar.update(1),
                )
        except InvalidInput as exc:
            raise CommandError(str(exc)) from exc
        progress = project_progress(project=project)
        self.stdout.write(
            f"{summary['labelers']} simulated labelers submitted {summary['rankings']} rankings "
            f"({summary['pairs']} pairs, {summary['tied_pairs']} tied pairs, "
            f"agreement with the noise-free utility {summary['agreement']}). "
            f"Project {project.slug}: {progress['slots_filled']}/{progress['slots_total']} slots filled "
            f"({progress['percent_complete']}%), {progress['pairs']} pairs in total."
        )
