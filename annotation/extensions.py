"""What the apps above annotation plug into it: the services that score responses with trained models, and
the checks that keep a ranking from being changed once something above has used it.

annotation/ imports nothing from training or lab (the import-linter contracts in pyproject.toml), yet its
quality page and API offer AI labelers and active selection, which may score with a reward model. The lab
app registers those services here in ``LabConfig.ready``; the quality views call them through
``model_services()``. Without a registration they raise ``InvalidInput``, which the views answer with 400.
Likewise training registers ``ranking_lock_register(...)`` in ``TrainingConfig.ready`` so that a labeler
cannot correct a ranking a training run has snapshotted (``annotation.services._correctable_ranking``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from annotation.errors import InvalidInput


@dataclass(frozen=True)
class ModelServices:
    round_select: Callable  # (round_, strategy, artifact_id, seed, user) → SelectionRecord
    ai_labeler_create: Callable  # (project, name, kind, spec, tie_threshold) → AILabeler
    ai_labeler_run: Callable  # (labeler, max_prompts, scorer) → {"labeler", "rankings", "pairs", ...}
    reward_models: Callable = lambda *, project: []  # (project) → the project's reward models, newest first


_registered: list[ModelServices] = []


def model_services_register(services: ModelServices) -> None:
    """Called once per process by the app that provides them (a second call replaces the first)."""
    _registered[:] = [services]


def model_services_or_none() -> ModelServices | None:
    """The registered services, or None when no app above annotation provides them (pages then offer less)."""
    return _registered[0] if _registered else None


def model_services() -> ModelServices:
    if not _registered:
        raise InvalidInput("AI labelers and active selection need the lab app (INSTALLED_APPS)")
    return _registered[0]


_ranking_locks: list[Callable] = []


def ranking_lock_register(check: Callable) -> None:
    """``check(ranking) -> str``: why the ranking may no longer change ("" when it may); registered once."""
    if check not in _ranking_locks:
        _ranking_locks.append(check)


def ranking_lock_reason(ranking) -> str:
    """The first reason a registered check gives for keeping ``ranking`` as it is, or ""."""
    for check in _ranking_locks:
        reason = check(ranking)
        if reason:
            return reason
    return ""
