"""Shared by the run-launching commands: read a JSON config file, follow a run with a progress bar."""
import json
import time
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from annotation.errors import InvalidInput
from annotation.provenance import CHOICES, DEFAULT_AI_WEIGHT, DEFAULT_CHOICE, SourceSelection, source_selection_parse
from training.models import ModelArtifact, TrainingRun

WAIT_HELP = "seconds between progress checks with --wait"


def add_source_arguments(parser) -> None:
    """--sources / --include-arena / --ai-weight: which ranking sources the run's snapshot takes."""
    parser.add_argument("--sources", choices=CHOICES, default=DEFAULT_CHOICE,
                        help="rankings to train on (default human: human, simulated, imported, gold-prompt rankings; "
                             "ai; both; weighted; arena)")
    parser.add_argument("--include-arena", action="store_true", help="add arena votes to the chosen sources")
    parser.add_argument("--ai-weight", type=float, default=None,
                        help=f"with --sources weighted: AI pair weight factor in (0, 1] (default {DEFAULT_AI_WEIGHT})")


def source_selection_from(options: dict) -> SourceSelection:
    try:
        return source_selection_parse(choice=options["sources"], include_arena=options["include_arena"],
                                      ai_weight=options["ai_weight"])
    except InvalidInput as error:
        raise CommandError(str(error)) from error


def read_config(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CommandError(f"--config {path}: {error}") from error
    if not isinstance(data, dict):
        raise CommandError(f"--config {path}: must hold a JSON object")
    return data


def run_follow(run: TrainingRun, *, poll: float, stdout) -> None:
    """Show the run's progress until it ends; CommandError (exit 1) unless it succeeded."""
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
    stdout.write(f"run {run.pk} succeeded: model {artifact.path if artifact else '?'}"
                 + (f", held-out accuracy {accuracy:.3f}" if accuracy is not None else ""))
