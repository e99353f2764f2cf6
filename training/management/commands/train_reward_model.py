"""python manage.py train_reward_model --project SLUG [--base MODEL_DIR] [--config FILE.json] [--wait]

Launches the same run as the browser button (``training.services.run_create``). With --wait it follows
the run with a progress bar and exits non-zero unless the run succeeds.
"""
import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.errors import InvalidInput
from annotation.models import Project
from training.models import ModelArtifact, TrainingRun
from training.services import run_create


class Command(BaseCommand):
    help = "Queue a reward-model run on the project's rankings (a Celery gpu worker trains it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--base", help="local model directory (default: the project's newest base model)")
        parser.add_argument("--config", help="JSON file of RewardConfig settings")
        parser.add_argument("--rounds", help="comma-separated round numbers (default: all)")
        parser.add_argument("--wait", action="store_true", help="follow the run and fail unless it succeeds")
        parser.add_argument("--poll", type=float, default=1.0, help=WAIT_HELP)

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        config = _read_config(options["config"])
        base_artifact = None
        if options["base"]:
            config["base_model"] = str(Path(options["base"]).expanduser().resolve())
        elif "base_model" not in config:
            base_artifact = project.artifacts.filter(kind=ModelArtifact.Kind.BASE).exclude(
                name="tiny-causal-lm").order_by("-id").first()
            if base_artifact is None:
                raise CommandError("No --base given and the project has no base model: run build_tiny_models.")
        rounds = [int(r) for r in options["rounds"].split(",")] if options["rounds"] else None
        try:
            run = run_create(project=project, kind=TrainingRun.Kind.REWARD, config=config,
                             base_artifact=base_artifact, rounds=rounds)
        except InvalidInput as error:
            raise CommandError(str(error)) from error
        snap = run.snapshot
        self.stdout.write(f"run {run.pk} queued: {snap.num_rankings} rankings, {snap.num_pairs} pairs, "
                          f"{snap.num_prompts} prompts (snapshot {snap.pk})")
        if options["wait"]:
            self._follow(run, options["poll"])

    def _follow(self, run: TrainingRun, poll: float) -> None:
        with tqdm(total=None, unit="step", desc=f"run {run.pk}") as bar:
            while True:
                run.refresh_from_db()
                if run.total_steps and bar.total != run.total_steps:
                    bar.total = run.total_steps
                bar.n = run.step
                bar.set_postfix_str(run.status)
                bar.refresh()
                if run.is_terminal:
                    break
                time.sleep(poll)
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"run {run.pk} {run.status}: {run.error or 'no error recorded'}")
        artifact = ModelArtifact.objects.filter(run=run).first()
        accuracy = (run.summary.get("final_eval") or {}).get("accuracy")
        self.stdout.write(f"run {run.pk} succeeded: model {artifact.path if artifact else '?'}"
                          + (f", held-out accuracy {accuracy:.3f}" if accuracy is not None else ""))


WAIT_HELP = "seconds between progress checks with --wait"


def _read_config(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CommandError(f"--config {path}: {error}") from error
    if not isinstance(data, dict):
        raise CommandError(f"--config {path}: must hold a JSON object")
    return data
