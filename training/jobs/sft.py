"""The SFT kind: fine-tune on the project's demonstrations plus, when rounds are given, the top-ranked responses."""
from __future__ import annotations

from pathlib import Path

from annotation.errors import InvalidInput
from annotation.models import Project
from training.health import health_watch_for
from training.jobs.base import JobFailed, JobResult, policy_result, run_config
from training.ml.types import TrainHooks
from training.models import DatasetSnapshot, TrainingRun
from training.policy_data import demonstrations_all
from training.selectors import snapshot_ranked_groups


def top_ranked_examples(groups) -> list[tuple[list[dict], str]]:
    """(prompt, response) for every response in the best tier of each ranking, once per prompt and text."""
    seen, out = set(), []
    for group in groups:
        for tiers in group.rankings:
            for index in tiers[0] if tiers else []:
                key = (group.prompt_id, group.responses[index])
                if key not in seen:
                    seen.add(key)
                    out.append((group.messages, group.responses[index]))
    return out


def sft_examples(*, project: Project, snapshot: DatasetSnapshot | None) -> list[tuple[list[dict], str]]:
    """The project's demonstrations plus, when the run has a snapshot, the top-ranked responses in it."""
    examples = demonstrations_all(project=project)
    if snapshot is not None:
        examples += top_ranked_examples(snapshot_ranked_groups(snapshot=snapshot))
    return examples


def sft_check(*, project: Project, config, snapshot, round) -> None:
    if snapshot is None and not project.demonstrations.exists():
        raise InvalidInput(f"Project {project.slug} has no demonstrations: import some, or give rounds to train "
                           "on their top-ranked responses.", location="rounds")


def sft_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from training.ml.trainers.sft import train_sft

    config = run_config(run)
    examples = sft_examples(project=run.project, snapshot=run.snapshot)
    if not examples:
        raise JobFailed("No demonstrations and no top-ranked responses to fine-tune on.")
    hooks.log(f"SFT on {len(examples)} examples")
    summary = train_sft(config, examples, output_dir=output_dir, hooks=hooks, resume=True,
                        health_watch=health_watch_for(run=run, config=config))
    return policy_result(summary, run, hooks)


