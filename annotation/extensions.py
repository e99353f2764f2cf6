"""What an app above annotation plugs into it: the services that score responses with trained models.

annotation/ imports nothing from training or lab (the import-linter contracts in pyproject.toml), yet its
quality page and API offer AI labelers and active selection, which may score with a reward model. The lab
app registers those services here in ``LabConfig.ready``; the quality views call them through
``model_services()``. Without a registration they raise ``InvalidInput``, which the views answer with 400.
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


_registered: list[ModelServices] = []


def model_services_register(services: ModelServices) -> None:
    """Called once per process by the app that provides them (a second call replaces the first)."""
    _registered[:] = [services]


def model_services() -> ModelServices:
    if not _registered:
        raise InvalidInput("AI labelers and active selection need the lab app (INSTALLED_APPS)")
    return _registered[0]
