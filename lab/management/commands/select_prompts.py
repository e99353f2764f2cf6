"""python manage.py select_prompts --project SLUG --round N [--strategy random|uncertainty|disagreement]
[--artifact ID] [--seed S]: order a round's queue by active selection and record the choice (random by
default; each strategy's help says what it is measured to save, ``annotation.quality.strategy_evidence``)."""
from django.core.management.base import BaseCommand, CommandError

from lab.active.services import STRATEGIES, round_select
from annotation.errors import InvalidInput
from annotation.models import Round
from annotation.quality.strategy_evidence import DEFAULT_STRATEGY, STRATEGY_EVIDENCE


class Command(BaseCommand):
    help = "Set a round's queue order by reward-model uncertainty, past disagreement or at random (recorded)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--round", type=int, required=True)
        parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES, help="; ".join(
            f"{name}: {evidence}" for name, evidence in STRATEGY_EVIDENCE.items()).replace("%", "%%"))
        parser.add_argument("--artifact", type=int, default=None, help="Reward model artifact id (uncertainty).")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options) -> None:
        round_ = Round.objects.filter(project__slug=options["project"], number=options["round"]).first()
        if round_ is None:
            raise CommandError(f"project {options['project']!r} has no round {options['round']}")
        try:
            record = round_select(round_=round_, strategy=options["strategy"], artifact_id=options["artifact"],
                                  seed=options["seed"])
        except InvalidInput as exc:
            raise CommandError(str(exc)) from exc
        top = ", ".join(f"{pk} ({record.scores[str(pk)]:.3f})" for pk in record.order[:5])
        self.stdout.write(f"selection {record.pk}: {record.strategy} ordered {len(record.order)} prompts of round "
                          f"{round_.number}; first: {top}")
        self.stdout.write(f"{record.strategy}: {STRATEGY_EVIDENCE[record.strategy]}")
        for note in record.params.get("notes", []):
            self.stdout.write(f"note: {note}")
