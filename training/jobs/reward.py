"""The reward kind: a K-way Bradley-Terry reward model on the snapshot's rankings, held out by prompt."""
from __future__ import annotations

from pathlib import Path

from training.jobs.base import JobFailed, JobResult, run_config
from training.ml.types import TrainHooks
from training.models import ModelArtifact, TrainingRun
from training.selectors import snapshot_ranked_groups


def reward_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    """Bradley-Terry reward model on the snapshot's rankings, held out by prompt."""
    from training.ml.data import split_by_prompt
    from training.ml.trainers.reward import train_reward_model

    config = run_config(run)
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    if not groups:
        raise JobFailed("The dataset snapshot holds no ranked prompts.")
    train, held_out = split_by_prompt(groups, config.eval_fraction, config.seed)
    hooks.log(f"snapshot {run.snapshot_id}: {len(groups)} prompts, {len(train)} train / {len(held_out)} held out")
    summary = train_reward_model(config, train, held_out, output_dir=output_dir, hooks=hooks, resume=True)
    stopped = bool(summary.get("stopped"))
    return JobResult(summary=summary, model_dir=None if stopped else Path(summary["model_dir"]),
                     artifact_kind=ModelArtifact.Kind.REWARD, stopped=stopped)
