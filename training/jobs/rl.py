"""The PPO and GRPO kinds: roll out on the round's (or the pool's) prompts against a reward model and/or a
registered reward function."""
from __future__ import annotations

import math
from pathlib import Path

from annotation.errors import InvalidInput
from annotation.hooks import hook_check, hook_names, hook_resolve
from annotation.models import Project
from training.health import health_watch_for
from training.jobs.base import JobFailed, JobResult, policy_result, run_config
from training.ml.types import TrainHooks
from training.model_sources import model_source_check
from training.models import TrainingRun
from training.policy_data import demonstrations_all, pool_prompts_all


def rl_check(*, project: Project, config, snapshot, round) -> None:
    if not config.reward_model and not config.reward_fn:
        raise InvalidInput("Give a reward model (a registered reward artifact) and/or a registered reward function "
                           f"({', '.join(hook_names(kind='reward_fn')) or 'none registered'}).",
                           location="config.reward_model")
    if config.reward_model:
        model_source_check(config.reward_model, location="config.reward_model")
    if config.reward_fn:  # a name from the operator's registry; nothing is imported here
        hook_check(kind="reward_fn", name=config.reward_fn, location="config.reward_fn")
    if not pool_prompts_all(project=project):
        raise InvalidInput(f"Project {project.slug} has no prompts to roll out on: import a prompt pool.",
                           location="project")
    if getattr(config, "ptx_coef", 0) > 0 and not project.demonstrations.exists():
        raise InvalidInput("PPO-ptx (ptx_coef > 0) trains on demonstrations: import some first.",
                           location="config.ptx_coef")


def rl_prompts(run: TrainingRun) -> list[list[dict]]:
    """A loop round's PPO/GRPO run rolls out on that round's prompts (as ``training.ml.loop`` does); a run
    started without a round, on the project's prompt pool."""
    if run.round_id is not None and run.round.prompts.exists():
        return list(run.round.prompts.order_by("id").values_list("messages", flat=True))
    return pool_prompts_all(project=run.project)


def rm_score_change(run: TrainingRun) -> float | None:
    """How much the reward model's score rose during the run (``training.ml.loop.rm_score_trend`` over every
    step stored, earlier attempts included); None when the run logged no reward-model score."""
    from training.ml.loop import rm_score_trend

    trend = rm_score_trend([p.values for p in run.metrics.filter(split="train").order_by("step")])
    return trend if math.isfinite(trend) else None


def _rl_job(train, run: TrainingRun, output_dir: Path, hooks: TrainHooks, **extra) -> JobResult:
    config = run_config(run)
    prompts = rl_prompts(run)
    where = f"round {run.round.number}'s" if run.round_id is not None else "pool"
    hooks.log(f"{run.kind.upper()} on {len(prompts)} {where} prompts; reward: "
              + " + ".join(x for x in (config.reward_model and "reward model", config.reward_fn) if x))
    # resolved only through the operator's registry: a stored name that is no longer registered (or an old
    # row holding "module:function") fails the run, and nothing it names is imported
    reward_fn = hook_resolve(kind="reward_fn", name=config.reward_fn, location="config.reward_fn") \
        if config.reward_fn else None
    try:
        summary = train(config, prompts, policy_dir=config.base_model, output_dir=str(output_dir), hooks=hooks,
                        resume=True, reward_fn=reward_fn, health_watch=health_watch_for(run=run, config=config),
                        **extra)
    except ValueError as error:
        raise JobFailed(str(error)) from error
    if not summary.get("stopped"):  # the over-optimisation monitor's evidence (training.rounds.flags_update)
        summary["rm_score_change"] = rm_score_change(run)
    return policy_result(summary, run, hooks)


def ppo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from transformers import AutoTokenizer

    from training.ml.loop import ptx_texts_from
    from training.ml.trainers.ppo import train_ppo

    ptx = None
    if run.config.get("ptx_coef"):  # the same PPO-ptx texts as training.ml.loop: chat-rendered prompt + response
        tokenizer = AutoTokenizer.from_pretrained(run_config(run).base_model)
        ptx = ptx_texts_from(demonstrations_all(project=run.project), tokenizer)
    return _rl_job(train_ppo, run, output_dir, hooks, ptx_texts=ptx)


def grpo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from training.ml.trainers.grpo import train_grpo

    return _rl_job(train_grpo, run, output_dir, hooks)


