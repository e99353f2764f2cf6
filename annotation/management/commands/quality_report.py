"""python manage.py quality_report --project SLUG [--round N] [--json] [--update-weights]: label quality figures."""
import json

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from annotation.quality.selectors import quality_report
from annotation.quality.services import pair_weights_update


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


class Command(BaseCommand):
    help = "Agreement (pairwise, Kendall τ-b, Krippendorff α), per-labeler reliability, bias, speed, review queue."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--round", type=int, default=None, help="Only this round.")
        parser.add_argument("--json", action="store_true", help="Print the whole report as JSON.")
        parser.add_argument("--sources", choices=["human", "both"], default="human",
                            help="Rankings the agreement figures include: human (default) or human + AI labelers. "
                                 "Arena votes never count here.")
        parser.add_argument("--update-weights", action="store_true",
                            help="Write each labeler's reliability weight to their pairs first.")

    def handle(self, *args, **options) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {options['project']!r}")
        if options["round"] is not None and not project.rounds.filter(number=options["round"]).exists():
            raise CommandError(f"project {project.slug} has no round {options['round']}")
        if options["update_weights"]:
            weights = pair_weights_update(project=project)
        report = quality_report(project=project, round_number=options["round"], sources=options["sources"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=str))
            return
        self._print(report)
        if options["update_weights"]:
            self.stdout.write(f"weights written to the pairs of {len(weights)} labelers")

    def _print(self, report: dict) -> None:
        o = report["overall"]
        self.stdout.write(f"sources: {', '.join(report['sources']['included_sources'])}"
                          + (f" (left out: {report['sources']['left_out']})" if report["sources"]["left_out"] else ""))
        for warning in report["warnings"]:
            self.stdout.write(f"warning: {warning}")
        self.stdout.write(
            f"project {report['project']}: {o['rankings']} rankings, {o['comparisons']} ranking pairs on shared prompts; "
            f"pairwise agreement {_fmt(o['pairwise_agreement'])}, Kendall tau-b {_fmt(o['kendall_tau_b'])}, "
            f"Krippendorff alpha (ordinal) {_fmt(o['alpha_ordinal'])}; {report['gold_prompts']} gold prompts, "
            f"{report['excluded_rankings']} excluded rankings"
        )
        for r in report["rounds"]:
            self.stdout.write(f"  round {r['round']}: agreement {_fmt(r['pairwise_agreement'])}, "
                              f"tau-b {_fmt(r['kendall_tau_b'])}, alpha {_fmt(r['alpha_ordinal'])}")
        header = f"{'labeler':<20} {'source':<10} {'n':>5} {'agree':>7} {'tau_b':>7} {'vs_hum':>7} {'gold':>7} " \
                 f"{'consens':>7} {'reliab':>7} {'weight':>7} {'evid':>5} {'early':>7} {'med_ms':>8} flags"
        self.stdout.write(header)
        for row in report["labelers"]:
            bias = row["position_bias"]
            flags = [f for f, on in (("FAST", row["speed_flag"]),
                                     ("POSITION", bias["z"] is not None and abs(bias["z"]) > 3)) if on]
            self.stdout.write(
                f"{row['labeler'][:20]:<20} {row['source']:<10} {row['rankings']:>5} {_fmt(row['pairwise_agreement']):>7} "
                f"{_fmt(row['kendall_tau_b']):>7} {_fmt(row['agreement_with_humans']):>7} {_fmt(row['gold_agreement']):>7} "
                f"{_fmt(row['consensus_agreement']):>7} {_fmt(row['reliability']):>7} {_fmt(row['weight']):>7} "
                f"{row['evidence_pairs']:>5} {_fmt(bias['earlier_preferred']):>7} {_fmt(row['median_time_ms']):>8} "
                f"{' '.join(flags)}"
            )
        queue = report["review_queue"]
        self.stdout.write(f"review queue: {len(queue)} prompts below agreement {report['settings']['review_threshold']}"
                          + "".join(f"\n  prompt {q['prompt_id']}: {q['rankings']} rankings, agreement {q['agreement']}"
                                    for q in queue[:20]))
