"""python manage.py compare_selection (--project SLUG | --demo-task N) [--rounds R] [--batch B] [--noise S]
[--steps T] [--seeds S ...] [--suite | --utilities NAME ... | --utility module:function]: active (uncertainty)
vs random selection, measured.

Simulated labelers rank with the utility plus Gaussian noise; after each round a tiny reward model is trained
from scratch. Per utility the command prints held-out accuracy per labelled comparison for both strategies
(mean ± standard error over the seeds) and the measured saving: the labels active selection needed to reach
random's final accuracy, and in how many seeds it reached it at all; then one summary line per utility.
``--suite`` runs the 8 utilities of ``training.ml.utility_suite.SUITE``; ``--utilities`` takes their names and
``demo_utility``. Writes nothing to the database.
"""
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import InvalidInput
from annotation.models import Project, Prompt
from annotation.utility import load_utility
from lab.active.compare import SimPrompt, WIN_MARGIN_SE, compare_selection_seeds, demo_task_prompts, savings_summary


def project_prompts(project: Project, utility) -> list[SimPrompt]:
    out = []
    for prompt in Prompt.objects.filter(project=project).prefetch_related("samples").order_by("id"):
        texts = [s.text for s in sorted(prompt.samples.all(), key=lambda s: s.position)]
        if len(texts) >= 2:
            out.append(SimPrompt(prompt.pk, prompt.messages, texts, [float(utility(prompt.messages, t)) for t in texts]))
    return out


def named_utilities() -> dict:
    """The names ``--utilities`` accepts: the suite's and the demo's own ``demo_utility``."""
    from training.ml.demo_task import demo_utility
    from training.ml.utility_suite import SUITE

    return {"demo_utility": demo_utility, **SUITE}


class Command(BaseCommand):
    help = "Compare reward-model accuracy per labelled comparison for active (uncertainty) vs random selection."

    def add_arguments(self, parser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--project", help="Use this project's prompts and responses.")
        source.add_argument("--demo-task", type=int, metavar="N", help="Use N prompts of the training demo task.")
        parser.add_argument("--k", type=int, default=4, help="Responses per demo-task prompt.")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--utility", default=None, help="module:function (default: the project's demo utility).")
        which.add_argument("--suite", action="store_true", help="Every utility of the suite (demo task only).")
        which.add_argument("--utilities", nargs="+", metavar="NAME", help="Suite names or demo_utility (demo task).")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--batch", type=int, default=16, help="Prompts labelled per round.")
        parser.add_argument("--noise", type=float, default=0.3)
        parser.add_argument("--steps", type=int, default=40, help="Reward-model optimizer steps per training.")
        parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S")

    def handle(self, *args, **options) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        summaries = {}
        for name, prompts_for in self._sources(options).items():
            try:
                result = compare_selection_seeds(
                    prompts_for, seeds=options["seeds"], rounds=options["rounds"], batch=options["batch"],
                    noise=options["noise"], steps=options["steps"], log=lambda m, n=name: self.stdout.write(f"{n} {m}"),
                )
            except InvalidInput as exc:
                raise CommandError(str(exc)) from exc
            self._print(name, result, options["seeds"])
            summaries[name] = result
        self._print_summary(summaries)

    def _sources(self, options) -> dict:
        """{utility name: seed -> prompts} for the chosen prompts and utilities."""
        if options["demo_task"] is None:
            if options["suite"] or options["utilities"]:
                raise CommandError("--suite and --utilities score demo-task replies; use --demo-task N")
            project = Project.objects.filter(slug=options["project"]).first()
            if project is None:
                raise CommandError(f"no project with slug {options['project']!r}")
            name = options["utility"] or "annotation.utility:default_utility"
            prompts = project_prompts(project, load_utility(name))
            return {name: lambda seed: prompts}
        n, k = options["demo_task"], options["k"]
        if n < 4:
            raise CommandError("--demo-task needs at least 4 prompts")
        named = named_utilities()
        if options["suite"]:
            chosen = {name: named[name] for name in named if name != "demo_utility"}
        elif options["utilities"]:
            unknown = [name for name in options["utilities"] if name not in named]
            if unknown:
                raise CommandError(f"unknown utilities {unknown}; expected names among {sorted(named)}")
            chosen = {name: named[name] for name in options["utilities"]}
        elif options["utility"]:
            chosen = {options["utility"]: load_utility(options["utility"])}
        else:
            chosen = {"demo_utility": named["demo_utility"]}
        return {name: (lambda seed, u=utility: demo_task_prompts(n, k, seed, u)) for name, utility in chosen.items()}

    def _print(self, name: str, result: dict, seeds: list[int]) -> None:
        w = self.stdout.write
        w(f"== {name}: {len(seeds)} seeds ({' '.join(map(str, seeds))}), held out {result['held_out_prompts']} "
          "prompts per seed (ranked by the noise-free utility); accuracy mean ± standard error over seeds")
        w(f"{'round':>5} {'comparisons':>11}  {'random acc':>15}  {'active acc':>15}")
        for r, a in zip(result["curves"]["random"], result["curves"]["uncertainty"]):
            w(f"{r['round']:>5} {r['comparisons']:>5.0f}/{a['comparisons']:<5.0f}  {r['accuracy']:.4f} ± {r['se']:.4f}"
              f"  {a['accuracy']:.4f} ± {a['se']:.4f}")
        w(f"{name} saving: {self._saving_line(result)}")

    @staticmethod
    def _saving_line(s: dict) -> str:
        reached = (f"active reached random's final accuracy in {s['reached']}/{s['n_runs']} runs"
                   + (f", with {s['labels_to_reach']:.0f} comparisons on average where it did"
                      if s["labels_to_reach"] is not None else ""))
        return (f"{reached} (random used {s['random_comparisons']:.0f}); labels saved {s['saving']:+.3f} ± "
                f"{s['saving_se']:.3f} (a run that never reached it counts 0, so never below 0); paired saving "
                f"{s['paired_saving']:+.3f} ± {s['paired_saving_se']:.3f} (to the lower final accuracy); final "
                f"accuracy active − random {s['final_gap']:+.4f} ± {s['final_gap_se']:.4f}; "
                + ("active wins" if s["wins"]
                   else f"active does not win (needs paired saving − {WIN_MARGIN_SE:g}·se > 0)"))

    def _print_summary(self, results: dict) -> None:
        w = self.stdout.write
        pooled = ", then every (utility, seed) run pooled" if len(results) > 1 else ""
        w(f"== summary: per utility over its seeds{pooled}")
        w(f"{'utility':<16} {'reached':>7} {'labels to reach':>15} {'saved (± se)':>15} {'paired (± se)':>15} "
          f"{'final gap (± se)':>17}  verdict")
        for name, r in results.items():
            self._summary_row(name, r)
        if len(results) > 1:
            self._summary_row("all runs", savings_summary([run for r in results.values() for run in r["runs"]]))

    def _summary_row(self, name: str, s: dict) -> None:
        to_reach = f"{s['labels_to_reach']:.0f}/{s['random_comparisons']:.0f}" if s["labels_to_reach"] is not None \
            else f"–/{s['random_comparisons']:.0f}"
        self.stdout.write(f"{name:<16} {s['reached']:>3}/{s['n_runs']:<3} {to_reach:>15} "
                          f"{s['saving']:>+6.3f} ± {s['saving_se']:.3f} {s['paired_saving']:>+6.3f} ± "
                          f"{s['paired_saving_se']:.3f} {s['final_gap']:>+7.4f} ± {s['final_gap_se']:.4f}"
                          f"  {'active wins' if s['wins'] else 'no win'}")
