"""python manage.py run_loop --project SLUG --rounds N --labelers simulated [--utility module:function]
[--optimizer dpo|ppo|grpo] [--seed S]

Generate -> simulated labelling -> reward model -> policy run -> next round, each run created through the
same services as the browser and executed like the Celery task does (``training.loop``). Prints per round:
mean utility ± standard error, the reward model's held-out accuracy, KL to round 0's policy, health (% EOS,
% distinct, per-token NLL under round 0), the health gate's outcome and any monitor flag. A round's policy that
fails the gate is retried once with a safer setting, else the previous policy is kept (docs/loop.md, "The
health gate"). Exits with status 1 ("loop failed: ...") when the final policy is unhealthy or the labelers'
utility did not rise by more than one standard error.
"""
import json
import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.errors import InvalidInput
from annotation.models import Project
from training.loop import OPTIMIZERS, LoopFailed, LoopSettings, loop_run
from training.models import ModelArtifact


class Command(BaseCommand):
    help = "Run the collect-train loop with simulated labelers for N rounds."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--labelers", default="simulated", choices=["simulated"])
        parser.add_argument("--num-labelers", type=int, default=1, help="rankings per prompt")
        parser.add_argument("--utility", default="training.ml.demo_task:demo_utility", help="module:function")
        parser.add_argument("--optimizer", default="dpo", choices=OPTIMIZERS)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--prompts-per-round", type=int)
        parser.add_argument("--policy", type=int, help="round 0's policy artifact id (default: the newest policy, "
                                                       "or SFT on the project's demonstrations)")
        parser.add_argument("--loop-config", help="JSON object of training.ml.loop.LoopConfig fields to change")
        parser.add_argument("--policy-config", help="JSON object of extra settings for the policy runs")
        parser.add_argument("--in-process", action="store_true", help="run jobs in this process, not a child")

    def handle(self, *args, **o) -> None:
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"No project {o['project']!r}.")
        if o["rounds"] < 0:
            raise CommandError("--rounds must be >= 0")
        policy = None
        if o["policy"] is not None:
            policy = ModelArtifact.objects.filter(pk=o["policy"], project=project).first()
            if policy is None:
                raise CommandError(f"No model {o['policy']} in project {project.slug}.")
        settings = LoopSettings(
            rounds=o["rounds"], optimizer=o["optimizer"], utility=o["utility"], seed=o["seed"],
            prompts_per_round=o["prompts_per_round"], labelers=o["num_labelers"], in_process=o["in_process"],
            overrides=_json_object(o["loop_config"], "--loop-config"),
            policy_config=_json_object(o["policy_config"], "--policy-config"),
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # model loads in this process would break the round lines
        started = time.perf_counter()
        stages = 1 + 4 * o["rounds"]
        with tqdm(total=stages, desc=f"{project.slug} loop", unit="stage") as bar:
            def step(label: str) -> None:
                bar.set_postfix_str(label)
                bar.update(1)

            try:
                history = loop_run(project=project, settings=settings, policy=policy, log=tqdm.write, step=step)
            except (InvalidInput, LoopFailed) as error:
                raise CommandError(str(error)) from error
        first, last = history[0], history[-1]
        gain = last["utility_mean"] - first["utility_mean"]
        se = (first["utility_se"] ** 2 + last["utility_se"] ** 2) ** 0.5
        in_se = f"{gain / se:+.1f} standard errors" if se > 0 else "standard error 0"
        self.stdout.write(f"round {last['round']} vs round 0: utility {gain:+.3f} ({in_se}); "
                          f"wall time {time.perf_counter() - started:.0f}s")
        flagged = [m["round"] for m in history if m.get("flags")]
        self.stdout.write(f"monitor flagged rounds {flagged}" if flagged else "no monitor flag")
        from training.ml.monitor import loop_verdict

        problems = loop_verdict(history)  # exit status 1: final policy unhealthy, or the utility did not rise
        if problems:
            raise CommandError("loop failed: " + "; ".join(problems))
        self.stdout.write("loop passed: the final policy is healthy and the utility rose")


def _json_object(raw: str | None, name: str) -> dict:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise CommandError(f"{name}: {error}") from error
    if not isinstance(value, dict):
        raise CommandError(f"{name} must be a JSON object")
    return value
