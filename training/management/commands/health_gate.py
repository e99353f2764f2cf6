"""python manage.py health_gate --project SLUG [--thresholds JSON] [--task-checks NAME ...] [--policy ID]

Shows (and with --thresholds/--task-checks, sets) a project's health-gate settings
(``training.health.health_settings_update``); with --policy, prints that policy's verdict and figures.
"""
import json

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project
from training.health import health_settings_get, health_settings_update
from training.models import ModelArtifact


class Command(BaseCommand):
    help = "Show or set a project's health-gate thresholds and task checks; show a policy's verdict."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--thresholds", help='JSON object, e.g. {"max_nll_rise": 1.0, "min_eos_rate": 0.95}')
        parser.add_argument("--task-checks", nargs="*", help="registered task_check hook names (RLHF_HOOKS; built-in: demo_grammar)")
        parser.add_argument("--policy", type=int, help="a policy artifact id: print its verdict")

    def handle(self, *args, **o) -> None:
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"No project {o['project']!r}.")
        if o["thresholds"] is not None or o["task_checks"] is not None:
            try:
                thresholds = json.loads(o["thresholds"]) if o["thresholds"] else {}
            except json.JSONDecodeError as error:
                raise CommandError(f"--thresholds: {error}") from error
            if not isinstance(thresholds, dict):
                raise CommandError("--thresholds must be a JSON object")
            try:
                health_settings_update(project=project, thresholds=thresholds, task_checks=o["task_checks"] or [])
            except InvalidInput as error:
                raise CommandError(str(error)) from error
        thresholds, checks = health_settings_get(project=project)
        self.stdout.write(f"project {project.slug}: {json.dumps(thresholds.to_dict())}; task checks: "
                          f"{', '.join(checks) or 'none'}")
        if o["policy"] is not None:
            policy = ModelArtifact.objects.filter(pk=o["policy"], project=project).first()
            if policy is None:
                raise CommandError(f"No model {o['policy']} in project {project.slug}.")
            from training.ml.health import format_health

            if policy.healthy is None:
                self.stdout.write(f"policy #{policy.pk} {policy.name}: not checked")
            else:
                self.stdout.write(f"policy #{policy.pk} {policy.name}: {format_health(policy.health)}")
            kept = ((policy.run.summary or {}).get("health_kept") if policy.run_id else None) or {}
            if kept:  # the run's final policy failed; this is its last healthy in-run policy
                self.stdout.write(f"  {kept['note']}")
            if policy.health_override_at:
                self.stdout.write(f"  overridden by {policy.health_override_by} at {policy.health_override_at:%Y-%m-%d %H:%M}: "
                                  f"{policy.health_override_reason}")
