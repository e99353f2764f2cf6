"""Per-kind glue between a TrainingRun and a trainer in ``training/ml``.

A job turns the run's dataset snapshot into trainer inputs (``RankedGroup``s), calls the pure trainer
with hooks that report to the database, and says which save_pretrained directory to register. Kinds
plug in through ``JOBS``: a later algorithm adds its config class to ``training.ml.config.CONFIG_CLASSES``
and one ``JobSpec`` here. Trainers are imported inside the job functions so that the web process, which
only validates configs, never imports torch.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from annotation.errors import InvalidInput
from training.ml.config import ConfigError, TrainConfig, config_from_dict
from training.ml.types import TrainHooks
from training.models import ModelArtifact, TrainingRun

@dataclass(frozen=True)
class JobResult:
    """What a job hands back: the trainer's summary and the directory to register (None if nothing to)."""

    summary: dict
    model_dir: Path | None
    artifact_kind: str = ModelArtifact.Kind.REWARD
    stopped: bool = False


@dataclass(frozen=True)
class JobSpec:
    run: Callable[[TrainingRun, Path, TrainHooks], JobResult]
    base_model_field: str = "base_model"
    needs_pairs: bool = True  # the snapshot must hold at least one ranked pair
    # "pairs": a snapshot of ranked pairs is required; "optional": one is taken only when rounds are given;
    # "none": the run trains on no rankings (generation, PPO/GRPO roll out on the prompt pool).
    snapshot: str = "pairs"
    # kind-specific checks before anything is written: check(project=, config=, snapshot=, round=) raises InvalidInput
    check: Callable[..., None] | None = None


class JobFailed(Exception):
    """A permanent failure (bad data, missing model): the run ends FAILED without another attempt. The runner
    treats ``InvalidInput`` and ``training.ml.config.ConfigError`` (raised while loading what a setting
    names: ``training.ml.config.loading``) the same way."""


def run_output_dir(run: TrainingRun) -> Path:
    """``ARTIFACT_ROOT/runs/<id>/``: checkpoints/, model/ and logs/ of every attempt of the run."""
    return Path(settings.ARTIFACT_ROOT) / "runs" / str(run.pk)


def config_parse(*, kind: str, data: dict) -> TrainConfig:
    """The run's validated config; InvalidInput naming the field (``config.<field>``) otherwise."""
    try:
        return config_from_dict(kind, data)
    except ConfigError as error:
        raise InvalidInput(error.message, location=f"config.{error.field}") from error


def check_model_source(value: str, *, location: str) -> None:
    """A base model is a local save_pretrained directory, or a hub id where the operator allows the hub
    (``training.model_sources``: the operator's rule; what users may type is stricter)."""
    from training.model_sources import model_source_check

    model_source_check(value, location=location)


def job_for_kind(kind: str) -> JobSpec:
    if kind not in JOBS:
        raise InvalidInput(f"Unknown run kind {kind!r} (known: {', '.join(sorted(JOBS))}).", location="kind")
    return JOBS[kind]


def _adapter_base(model_dir: Path) -> str:
    adapter_config = model_dir / "adapter_config.json"
    if not adapter_config.exists():
        return ""
    return str(json.loads(adapter_config.read_text()).get("base_model_name_or_path") or "")


def artifact_fields(result: JobResult) -> dict:
    """is_adapter/base_model for ``artifact_register``, read from what the trainer actually saved."""
    base = _adapter_base(result.model_dir) if result.model_dir else ""
    return {"is_adapter": bool(base) or bool(result.model_dir and (result.model_dir / "adapter_config.json").exists()),
            "base_model": base}


# ----------------------------------------------------------------------------- kinds
def reward_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    """Bradley-Terry reward model on the snapshot's rankings, held out by prompt."""
    from training.ml.data import split_by_prompt
    from training.ml.trainers.reward import train_reward_model
    from training.selectors import snapshot_ranked_groups

    config = config_parse(kind=run.kind, data=run.config)
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    if not groups:
        raise JobFailed("The dataset snapshot holds no ranked prompts.")
    train, held_out = split_by_prompt(groups, config.eval_fraction, config.seed)
    hooks.log(f"snapshot {run.snapshot_id}: {len(groups)} prompts, {len(train)} train / {len(held_out)} held out")
    summary = train_reward_model(config, train, held_out, output_dir=output_dir, hooks=hooks, resume=True)
    stopped = bool(summary.get("stopped"))
    return JobResult(summary=summary, model_dir=None if stopped else output_dir / "model",
                     artifact_kind=ModelArtifact.Kind.REWARD, stopped=stopped)


JOBS: dict[str, JobSpec] = {
    TrainingRun.Kind.REWARD: JobSpec(run=reward_job),
}


def jobs_register(specs: dict[str, JobSpec]) -> None:
    """Add run kinds: SFT, generate, DPO, PPO and GRPO live in ``training.policy_jobs``, which imports this module,
    so ``TrainingConfig.ready`` registers them here (this module does not import them back)."""
    JOBS.update(specs)
