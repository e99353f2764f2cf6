"""python manage.py arena create|generate|list|leaderboard: blind checkpoint comparisons from the shell.

    arena create --project demo --model-a 7 --model-b 9 --name "sft vs dpo" --file prompts.jsonl [--generate]
    arena create --project demo --model-a 7 --model-b 9 --name "sft vs dpo" --pool 50 --generate
    arena generate --arena 3 [--max-new-tokens 64 --temperature 1.0 --seed 0]
    arena list --project demo
    arena leaderboard --project demo [--resamples 200] [--seed 0] [--json]

``--file`` lines are ``{"prompt": …}`` / ``{"messages": […]}``, optionally with ``response_a`` and ``response_b``
(then the arena opens at once); ``--pool N`` draws N prompts of the project's prompt pool (seeded).
"""
import json
import random

from django.core.management.base import BaseCommand, CommandError

from lab import services as arena_service
from lab import selectors as lab_selectors
from lab.models import Arena, ArenaVote
from annotation.errors import InvalidInput
from annotation.models import Project


class Command(BaseCommand):
    help = "Create arenas, generate their responses, list them and print the Bradley-Terry leaderboard."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="a new arena from a JSONL file or the prompt pool")
        create.add_argument("--project", required=True)
        create.add_argument("--model-a", type=int, required=True, help="ModelArtifact id")
        create.add_argument("--model-b", type=int, required=True, help="ModelArtifact id")
        create.add_argument("--name", required=True)
        source = create.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="JSONL of prompts (optionally with response_a / response_b)")
        source.add_argument("--pool", type=int, help="draw this many prompts from the project's prompt pool")
        create.add_argument("--generate", action="store_true", help="generate the responses now (in this process)")
        generate = sub.add_parser("generate", help="generate the responses of a waiting arena and open it")
        generate.add_argument("--arena", type=int, required=True)
        for p in (create, generate):
            p.add_argument("--max-new-tokens", type=int)
            p.add_argument("--temperature", type=float)
            p.add_argument("--seed", type=int)
        listing = sub.add_parser("list", help="the project's arenas")
        listing.add_argument("--project", required=True)
        board = sub.add_parser("leaderboard", help="Bradley-Terry strengths with bootstrap intervals")
        board.add_argument("--project", required=True)
        board.add_argument("--resamples", type=int, default=200)
        board.add_argument("--seed", type=int, default=0)
        board.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except InvalidInput as exc:
            raise CommandError(str(exc)) from exc

    def _project(self, slug: str) -> Project:
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            raise CommandError(f"no project {slug!r}")
        return project

    def _sampling(self, options) -> dict:
        names = {"max_new_tokens": "max_new_tokens", "temperature": "temperature", "seed": "seed"}
        return {key: options[opt] for key, opt in names.items() if options.get(opt) is not None}

    def _create(self, options) -> None:
        from training.models import ModelArtifact, PoolPrompt

        project = self._project(options["project"])
        if options["file"]:
            items = []
            with open(options["file"], encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            items.append(json.loads(line))
                        except ValueError as exc:
                            raise CommandError(f"{options['file']} line {number}: not valid JSON ({exc})") from exc
        else:
            pool = list(PoolPrompt.objects.filter(project=project).values_list("messages", flat=True))
            if options["pool"] < 1 or options["pool"] > len(pool):
                raise CommandError(f"--pool must be between 1 and the pool's size ({len(pool)})")
            items = [{"messages": m} for m in random.Random(options.get("seed") or 0).sample(pool, options["pool"])]
        models = ModelArtifact.objects.in_bulk([options["model_a"], options["model_b"]])
        arena = arena_service.arena_create(
            project=project, model_a=models.get(options["model_a"]), model_b=models.get(options["model_b"]),
            name=options["name"], items=items, sampling=self._sampling(options),
        )
        self.stdout.write(f"arena {arena.pk}: round {arena.round.number}, {len(items)} prompts, {arena.status}")
        if arena.status == Arena.Status.GENERATING and options["generate"]:
            self._generate({**options, "arena": arena.pk})

    def _generate(self, options) -> None:
        arena = Arena.objects.select_related("model_a", "model_b").filter(pk=options["arena"]).first()
        if arena is None:
            raise CommandError(f"no arena {options['arena']}")
        sampling = self._sampling(options)
        if sampling and arena.status == Arena.Status.GENERATING:
            arena.sampling_params = arena_service.sampling_validate({**arena.sampling_params, **sampling})
            arena.save(update_fields=["sampling_params"])
        arena = arena_service.arena_generate(arena=arena, log=self.stdout.write)
        self.stdout.write(f"arena {arena.pk}: {arena.status}; {arena.summary}")

    def _list(self, options) -> None:
        project = self._project(options["project"])
        for arena in Arena.objects.filter(project=project).select_related("model_a", "model_b"):
            votes = ArenaVote.objects.filter(pair__arena=arena).count()
            self.stdout.write(f"#{arena.pk} {arena.status:<10} {arena.name!r}: {arena.model_a.name} (#{arena.model_a_id})"
                              f" vs {arena.model_b.name} (#{arena.model_b_id}), {arena.pairs.count()} prompts, {votes} votes")

    def _leaderboard(self, options) -> None:
        project = self._project(options["project"])
        board = lab_selectors.arena_leaderboard(project=project, resamples=options["resamples"], seed=options["seed"])
        if options["json"]:
            self.stdout.write(json.dumps(board, indent=2))
            return
        self.stdout.write(f"{board['votes']} votes, {board['resamples']} bootstrap resamples (seed {board['seed']}), "
                          f"{board['confidence']:.0%} intervals")
        self.stdout.write(f"{'rank':>4}  {'checkpoint':<28} {'rating':>7}  {'interval':<15} {'votes':>5} "
                          f"{'W':>4} {'L':>4} {'T':>4} {'bad':>4}")
        for r in board["rows"]:
            name = f"{r['name']} (#{r['model_id']})"[:28]
            self.stdout.write(f"{r['rank']:>4}  {name:<28} {r['rating']:>7.1f}  {r['rating_low']:>6.1f}–{r['rating_high']:<7.1f} "
                              f"{r['votes']:>5} {r['wins']:>4} {r['losses']:>4} {r['ties']:>4} {r['both_bad']:>4}")
