"""The DPO kind: DPO on the snapshot's ranked groups (every ranking's C(K,2) pairs)."""
from __future__ import annotations

from pathlib import Path

from training.health import health_watch_for
from training.jobs.base import JobFailed, JobResult, policy_result, run_config
from training.ml.config import ConfigError
from training.ml.types import TrainHooks
from training.models import TrainingRun
from training.selectors import snapshot_ranked_groups


def dpo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    """DPO on the snapshot's ranked groups. The reference is each sample's stored generation log-prob, or, with
    ``reference_model`` set (a policy chosen at launch, the loop's round-0 anchor), that policy's log-probs,
    scored once before the first step; a reference that cannot be loaded fails the run at once
    (``ConfigError`` naming ``reference_model``, no retry)."""
    from training.ml.trainers.dpo import train_dpo

    config = run_config(run)
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    if not groups:
        raise JobFailed("The dataset snapshot holds no ranked prompts.")
    missing = sum(lp is None for g in groups for lp in g.ref_logprobs)
    hooks.log(f"snapshot {run.snapshot_id}: {len(groups)} prompts; "
              + (f"reference: {run.config.get('reference_model')}" if config.reference_model else
                 f"{missing} responses without a stored reference log-prob"))
    try:  # the held-out prompts, if any, are the config's eval_fraction of the snapshot's (split by prompt)
        summary = train_dpo(config, groups, [], output_dir=output_dir, hooks=hooks, resume=True,
                            health_watch=health_watch_for(run=run, config=config))
    except ConfigError:  # a setting's model cannot be loaded (the reference, the adapter): the runner fails the run
        raise
    except ValueError as error:  # e.g. every group fully tied: bad data, not a crash
        raise JobFailed(str(error)) from error
    return policy_result(summary, run, hooks)
