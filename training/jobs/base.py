"""What every run kind shares: the job's signature and result, its failure, config parsing, and the policy gate.

A job turns the run's inputs (dataset snapshot, demonstrations, round, prompt pool) into trainer inputs,
calls the pure trainer in ``training/ml`` with hooks that report to the database, and says which
save_pretrained directory to register. Trainers are imported inside the job functions so that the web
process, which only validates configs, never imports torch.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from annotation.errors import InvalidInput
from training.health import policy_gate
from training.ml.config import ConfigError, TrainConfig, config_from_dict
from training.ml.types import TrainHooks
from training.model_sources import model_fields_resolved
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


def config_parse(*, kind: str, data: dict) -> TrainConfig:
    """The run's validated config; InvalidInput naming the field (``config.<field>``) otherwise."""
    try:
        return config_from_dict(kind, data)
    except ConfigError as error:
        raise InvalidInput(error.message, location=f"config.{error.field}") from error


def run_config(run: TrainingRun) -> TrainConfig:
    """The run's config as this worker trains it: every model setting stored relative to the artifact root
    resolved against this worker's root, with the containment rules checked again on the resolved paths
    (``training.model_sources.model_fields_resolved``). InvalidInput (the run fails, no retry) otherwise."""
    return config_parse(kind=run.kind, data=model_fields_resolved(run.config,
                                                                  user_launched=run.launched_by_id is not None))


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


def policy_result(summary: dict, run: TrainingRun, hooks: TrainHooks) -> JobResult:
    """The trained policy to register (SFT, DPO, PPO, GRPO), after the health gate
    (``training.health.policy_gate``) checked it: the last healthy in-run policy when the final one fails; the
    verdict and figures go in the summary and on the artifact; an unhealthy policy is registered but may not
    generate a round without a recorded override."""
    stopped = bool(summary.get("stopped"))
    model_dir = None if stopped or not summary.get("policy_dir") else \
        policy_gate(run=run, policy_dir=summary["policy_dir"], summary=summary, log=hooks.log)
    return JobResult(summary=summary, model_dir=model_dir, artifact_kind=ModelArtifact.Kind.POLICY, stopped=stopped)
