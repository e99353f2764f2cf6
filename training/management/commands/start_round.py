"""python manage.py start_round --project SLUG --policy ARTIFACT_ID [--prompts FILE | --sample N] [--k K]
[--temperature T] [--top-p P] [--max-new-tokens M] [--seed S] [--wait | --in-process]

The same service as the browser's "Start next round" (``training.rounds.round_start``): a new round in
status GENERATING and a generation run on the gpu queue, which writes the samples and opens the round.
--wait generates here, in a child process, as a worker would (no worker needed); --in-process in this process.
--prompts takes JSONL ({"prompt": ...} or {"messages": [...]} per line); --sample draws N from the pool.
"""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Project
from training.loop import LoopFailed, run_execute
from training.models import ModelArtifact
from training.policy_data import policy_lines_parse, pool_prompts_sample
from training.rounds import round_start


class Command(BaseCommand):
    help = "Start the next round: K samples per prompt from a policy, then open the round to labelers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--policy", type=int, required=True, help="policy artifact id")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--prompts", help="JSONL file of prompts")
        source.add_argument("--sample", type=int, help="draw N prompts from the project's pool")
        parser.add_argument("--k", type=int)
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--top-p", type=float)
        parser.add_argument("--max-new-tokens", type=int)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--wait", action="store_true", help="generate now (like the worker) and wait")
        parser.add_argument("--in-process", action="store_true",
                            help="generate in this process rather than a child process; implies --wait")
        parser.add_argument("--override-health", default="", metavar="WHY",
                            help="let a policy that failed the health gate generate (recorded with --user)")
        parser.add_argument("--user", help="the researcher who overrides (a username)")

    def handle(self, *args, **o) -> None:
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"No project {o['project']!r}.")
        policy = ModelArtifact.objects.filter(pk=o["policy"], project=project).first()
        if policy is None:
            raise CommandError(f"No model {o['policy']} in project {project.slug}.")
        sampling = {key: o[key] for key in ("k", "temperature", "top_p", "max_new_tokens", "seed") if o[key] is not None}
        try:
            if o["prompts"]:
                try:
                    with open(Path(o["prompts"]), "rb") as f:
                        prompts = [m for m, _ in policy_lines_parse(f)]
                except OSError as error:
                    raise CommandError(f"--prompts: {error}") from error
            else:
                prompts = pool_prompts_sample(project=project, n=o["sample"], seed=o["seed"])
            user = None
            if o["override_health"]:
                from django.contrib.auth import get_user_model

                user = get_user_model().objects.filter(username=o["user"] or "").first()
                if user is None:
                    raise CommandError("--override-health needs --user USERNAME (a researcher of the project)")
            run = round_start(project=project, policy_artifact=policy, prompts=prompts, sampling=sampling, user=user,
                              health_override=o["override_health"])
        except (InvalidInput, NotAllowed) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"round {run.round.number}: {len(prompts)} prompts; generation run {run.pk} queued")
        if o["wait"] or o["in_process"]:
            try:
                run = run_execute(run=run, in_process=o["in_process"])
            except LoopFailed as error:
                raise CommandError(str(error)) from error
            self.stdout.write(f"round {run.round.number} open: {run.summary.get('samples')} samples "
                              f"(EOS {100 * run.summary.get('eos_rate', 0):.1f}%)")
