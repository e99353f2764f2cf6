"""python manage.py compare_selection (--project SLUG | --demo-task N) [--rounds R] [--batch B] [--noise S]
[--steps T] [--utility module:function] [--seed S]: active (uncertainty) vs random selection, measured.

Simulated labelers rank with the utility plus Gaussian noise; after each round a tiny reward model is trained
from scratch; the command prints held-out accuracy per labelled comparison for both strategies and the
ratio of labels active selection needed to reach random's final accuracy. Writes nothing to the database.
"""
import random
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from lab.active.compare import SimPrompt, compare_selection
from annotation.errors import InvalidInput
from annotation.models import Project, Prompt
from annotation.utility import load_utility


def project_prompts(project: Project, utility) -> list[SimPrompt]:
    out = []
    for prompt in Prompt.objects.filter(project=project).prefetch_related("samples").order_by("id"):
        texts = [s.text for s in sorted(prompt.samples.all(), key=lambda s: s.position)]
        if len(texts) >= 2:
            out.append(SimPrompt(prompt.pk, prompt.messages, texts, [float(utility(prompt.messages, t)) for t in texts]))
    return out


def demo_task_prompts(n: int, k: int, seed: int) -> list[SimPrompt]:
    """``n`` story prompts of the training demo task, each with ``k`` distinct demonstration-style replies."""
    from training.ml import demo_task

    rng, out = random.Random(seed), []
    for i in range(n):
        messages = demo_task.demo_prompt(rng.choice(demo_task.NOUNS))
        noun = messages[0]["content"].split()[-1].rstrip(".")
        texts: list[str] = []
        while len(texts) < k:
            text = demo_task.demonstration_text(rng, noun)
            if text not in texts:
                texts.append(text)
        out.append(SimPrompt(i, messages, texts, [demo_task.demo_utility(messages, t) for t in texts]))
    return out


class Command(BaseCommand):
    help = "Compare reward-model accuracy per labelled comparison for active (uncertainty) vs random selection."

    def add_arguments(self, parser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--project", help="Use this project's prompts and responses.")
        source.add_argument("--demo-task", type=int, metavar="N", help="Use N prompts of the training demo task.")
        parser.add_argument("--k", type=int, default=4, help="Responses per demo-task prompt.")
        parser.add_argument("--utility", default=None, help="module:function (default: the project's demo utility).")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--batch", type=int, default=16, help="Prompts labelled per round.")
        parser.add_argument("--noise", type=float, default=0.3)
        parser.add_argument("--steps", type=int, default=40, help="Reward-model optimizer steps per training.")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        try:
            prompts = self._prompts(options)
            with tempfile.TemporaryDirectory() as tmp:
                base = self._tiny_base(prompts, Path(tmp), seed=options["seed"])
                result = compare_selection(
                    prompts, base_model=str(base), rounds=options["rounds"], batch=options["batch"],
                    noise=options["noise"], steps=options["steps"], seed=options["seed"], log=self.stdout.write,
                )
        except InvalidInput as exc:
            raise CommandError(str(exc)) from exc
        self._print(result)

    def _prompts(self, options) -> list[SimPrompt]:
        if options["demo_task"] is not None:
            if options["demo_task"] < 4:
                raise CommandError("--demo-task needs at least 4 prompts")
            return demo_task_prompts(options["demo_task"], options["k"], options["seed"])
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {options['project']!r}")
        utility = load_utility(options["utility"] or "annotation.utility:default_utility")
        return project_prompts(project, utility)

    @staticmethod
    def _tiny_base(prompts: list[SimPrompt], root: Path, *, seed: int) -> Path:
        from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer

        texts = [m["content"] for p in prompts for m in p.messages] + [t for p in prompts for t in p.responses]
        tokenizer = build_tokenizer(texts, root / "tokenizer", vocab_size=512)
        return build_tiny_reward_model(root / "base", tokenizer, hidden=32, layers=1, heads=2, seed=seed)

    def _print(self, result: dict) -> None:
        self.stdout.write(f"held out: {result['held_out_prompts']} prompts, {result['held_out_pairs']} pairs "
                          f"(ranked by the noise-free utility)")
        self.stdout.write(f"{'round':>5} {'comparisons':>12} {'random acc':>11} {'active acc':>11}")
        for r, a in zip(result["curves"]["random"], result["curves"]["uncertainty"]):
            self.stdout.write(f"{r['round']:>5} {r['comparisons']:>5}/{a['comparisons']:<6} "
                              f"{r['accuracy']:>11.4f} {a['accuracy']:>11.4f}")
        if result["label_ratio"] is None:
            self.stdout.write(f"active selection did not reach random's final accuracy {result['target_accuracy']}")
        else:
            self.stdout.write(
                f"label ratio: active reached random's final accuracy {result['target_accuracy']} with "
                f"{result['active_comparisons_to_target']} comparisons vs {result['random_comparisons']} "
                f"({result['label_ratio']} of the labels)")
