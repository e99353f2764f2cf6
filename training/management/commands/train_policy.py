"""python manage.py train_policy --project SLUG --kind sft|dpo|ppo|grpo --policy ARTIFACT_ID
                                 [--reward ARTIFACT_ID] [--reference ARTIFACT_ID] [--config FILE.json]
                                 [--rounds 1,2] [--wait | --in-process]

Launches the same policy run as the lineage page's "Train a policy" form and the API
(``training.services.run_create``): SFT on demonstrations (or the top-ranked responses of --rounds), DPO on
the project's pairs, PPO or GRPO against a registered reward model. With --wait it follows the run with a
progress bar and exits non-zero unless the run succeeds; when no Celery worker consumes the gpu queue it
says so within seconds (queueing nothing). --in-process runs the job in this process instead.
"""
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project
from training.management.cli import (
    IN_PROCESS_HELP, WAIT_HELP, add_source_arguments, read_config, run_finish, source_selection_from, worker_require,
)
from training.models import ModelArtifact, TrainingRun
from training.services import run_create

POLICY_KINDS = [TrainingRun.Kind.SFT, TrainingRun.Kind.DPO, TrainingRun.Kind.PPO, TrainingRun.Kind.GRPO]


class Command(BaseCommand):
    help = "Queue a policy run (SFT, DPO, PPO or GRPO); a Celery gpu worker trains it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--kind", required=True, choices=POLICY_KINDS)
        parser.add_argument("--policy", type=int, help="id of the policy (or base) artifact to start from")
        parser.add_argument("--reward", type=int, help="id of the reward-model artifact (PPO, GRPO)")
        parser.add_argument("--reference", type=int, help="DPO: id of the policy artifact whose log-probs are the "
                                                          "reference (default: the stored generation log-probs)")
        parser.add_argument("--config", help="JSON file of the kind's config settings")
        parser.add_argument("--rounds", help="comma-separated round numbers to train on (default: all)")
        add_source_arguments(parser)
        parser.add_argument("--wait", action="store_true", help="follow the run and fail unless it succeeds")
        parser.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
        parser.add_argument("--poll", type=float, default=1.0, help=WAIT_HELP)

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        policy = _artifact(project, options["policy"], "--policy")
        reward = _artifact(project, options["reward"], "--reward")
        reference = _artifact(project, options["reference"], "--reference")
        rounds = [int(r) for r in options["rounds"].split(",")] if options["rounds"] else None
        worker_require(options)
        try:
            run = run_create(project=project, kind=options["kind"], config=read_config(options["config"]),
                             base_artifact=policy, reward_artifact=reward, reference_artifact=reference, rounds=rounds,
                             sources=source_selection_from(options))
        except InvalidInput as error:
            raise CommandError(str(error)) from error
        data = (f"snapshot {run.snapshot_id}: {run.snapshot.num_pairs} pairs, sources "
                f"{', '.join(run.snapshot.filters.get('included_sources') or [])}" if run.snapshot else "prompt pool")
        self.stdout.write(f"{run.kind} run {run.pk} queued ({data})")
        run_finish(run, options=options, stdout=self.stdout)


def _artifact(project: Project, artifact_id: int | None, flag: str) -> ModelArtifact | None:
    if artifact_id is None:
        return None
    artifact = ModelArtifact.objects.filter(project=project, pk=artifact_id).first()
    if artifact is None:
        raise CommandError(f"{flag} {artifact_id}: no model artifact with that id in project {project.slug!r}.")
    return artifact
