"""The run kinds: one module per kind, one registry (``JOBS``) here.

A kind is a ``JobSpec`` (``training.jobs.base``): the job that turns a TrainingRun into a trainer call in
``training/ml`` and the directory to register, which inputs it needs (a snapshot of ranked pairs, or not) and
its checks before anything is written. A new algorithm adds its config class to
``training.ml.config.CONFIG_CLASSES``, a module here and one line in ``JOBS``.
"""
from __future__ import annotations

from annotation.errors import InvalidInput
from training.jobs.base import JobSpec
from training.jobs.dpo import dpo_job
from training.jobs.generate import generate_check, generate_job
from training.jobs.reward import reward_job
from training.jobs.rl import grpo_job, ppo_job, rl_check
from training.jobs.sft import sft_check, sft_job
from training.models import TrainingRun

JOBS: dict[str, JobSpec] = {
    TrainingRun.Kind.REWARD: JobSpec(run=reward_job),
    TrainingRun.Kind.SFT: JobSpec(run=sft_job, snapshot="optional", check=sft_check),
    TrainingRun.Kind.GENERATE: JobSpec(run=generate_job, snapshot="none", check=generate_check),
    TrainingRun.Kind.DPO: JobSpec(run=dpo_job),
    TrainingRun.Kind.PPO: JobSpec(run=ppo_job, snapshot="none", check=rl_check),
    TrainingRun.Kind.GRPO: JobSpec(run=grpo_job, snapshot="none", check=rl_check),
}


def job_for_kind(kind: str) -> JobSpec:
    if kind not in JOBS:
        raise InvalidInput(f"Unknown run kind {kind!r} (known: {', '.join(sorted(JOBS))}).", location="kind")
    return JOBS[kind]
