"""Shared by the run-launching commands: read a JSON config file, check that a worker will take the run,
follow a run with a progress bar, or run it in this process."""
import json
import time
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from annotation.errors import InvalidInput
from annotation.provenance import CHOICES, DEFAULT_AI_WEIGHT, DEFAULT_CHOICE, SourceSelection, source_selection_parse
from training.accuracy import accuracy_of_summary, accuracy_text
from training.models import ModelArtifact, TrainingRun
from training.workers import no_worker_message, workers_consuming

WAIT_HELP = "seconds between progress checks with --wait"
IN_PROCESS_HELP = "run the job in this process (no Celery worker needed) and wait for it; implies --wait"
WORKER_CHECK_SECONDS = 2.0


def worker_require(options: dict) -> None:
    """Before queueing a run the command will wait for: refuse (writing nothing) when no worker would take it."""
    if options.get("wait") and not options.get("in_process"):
        if not workers_consuming(timeout=WORKER_CHECK_SECONDS):
            raise CommandError(no_worker_message(timeout=WORKER_CHECK_SECONDS))


def run_finish(run: TrainingRun, *, options: dict, stdout) -> None:
    """--in-process: run it here; --wait: follow the worker's progress; neither: leave it queued."""
    if options.get("in_process"):
        from training.loop import LoopFailed, run_execute

        try:
            run = run_execute(run=run, in_process=True)
        except LoopFailed as error:
            raise CommandError(str(error)) from error
        run_report(run, stdout=stdout)
    elif options.get("wait"):
        run_follow(run, poll=options["poll"], stdout=stdout)


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
    run_report(run, stdout=stdout)


def run_report(run: TrainingRun, *, stdout) -> None:
    artifact = ModelArtifact.objects.filter(run=run).first()
    info = accuracy_of_summary(run.summary)
    stdout.write(f"run {run.pk} succeeded: model {artifact.path if artifact else '?'}"
                 + (f", held-out accuracy {accuracy_text(info)}" if info else ""))
    if info and info["too_small"]:
        stdout.write(f"warning: {info['warning']}")
