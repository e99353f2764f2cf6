"""Where a run's models may come from: the rules for every setting that names a model (``base_model``, the
DPO/generation ``adapter``, PPO/GRPO ``reward_model``, DPO's ``reference_model``, the LLM judge's directory).

- Users (browser, API) choose models as artifacts of their own project; the service fills the paths in. A
  directory they type is accepted only under an operator's model root (setting ``RLHF_MODEL_ROOTS``): it is
  resolved with every symlink followed, ``..`` is refused, and nothing inside ARTIFACT_ROOT (every project's
  runs) is accepted. A missing, forbidden or non-model directory gets one and the same answer, so the error
  reveals nothing about what exists on the server.
- The operator at the command line (``user=None``) may name any local directory, as documented.
- A hub id (``gpt2``, ``org/model``) is accepted only when the operator turned the hub on
  (``RLHF_ALLOW_MODEL_HUB``); otherwise workers run with the Hugging Face libraries offline and it is refused.

A run's config stores a model inside ARTIFACT_ROOT in its root-relative form (``model_fields_stored``;
``training.artifact_paths.model_path_stored``) and each worker resolves it against its own root when the run
starts (``model_fields_resolved``), checking again there what the rules above checked at creation: the path
resolved on the worker stays inside the artifact root, and for a run a user launched an absolute path still lies
under a model root (or inside the artifact root) once every symlink is followed. Model roots are the operator's,
per machine: their directories stay absolute in the config.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from django.conf import settings

from annotation.errors import InvalidInput
from training.artifact_paths import artifact_root, model_path_resolved, model_path_stored

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
MODEL_FIELDS = ("base_model", "adapter", "reward_model", "reference_model")  # config settings that name a model
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def hub_allowed() -> bool:
    return bool(getattr(settings, "RLHF_ALLOW_MODEL_HUB", False))


def offline_environment() -> dict[str, str]:
    """Environment for worker processes: the HF libraries never reach a hub unless the operator allows it."""
    return {} if hub_allowed() else dict(OFFLINE_ENV)


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or "\\" in value


def _hub_refused(value: str, location: str) -> InvalidInput:
    return InvalidInput(f"{value[:200]!r} looks like a model hub id, and this server does not download models "
                        "(RLHF_ALLOW_MODEL_HUB is off): choose a registered model of the project or a local "
                        "model directory.", location=location)


def model_source_check(value: str, *, location: str) -> None:
    """The operator's rule (command line, worker-side configs): any local save_pretrained directory, or a hub
    id where the operator allows the hub."""
    if not value:
        raise InvalidInput("A base model is required: a local model directory or a registered base artifact.",
                           location=location)
    path = Path(value).expanduser()
    if _looks_like_path(value) or path.exists():
        if not path.is_dir():
            raise InvalidInput(f"Model directory {value} does not exist on this server.", location=location)
        _model_config_check(path, value=value, location=location)
    elif not HUB_ID.match(value):
        raise InvalidInput(f"{value!r} is neither an existing directory nor a hub id like 'org/model'.",
                           location=location)
    elif not hub_allowed():
        raise _hub_refused(value, location)


def _model_config_check(path: Path, *, value: str, location: str) -> None:
    config_file = next((path / n for n in ("adapter_config.json", "config.json") if (path / n).exists()), None)
    if config_file is None:
        raise InvalidInput(f"{value} has no config.json: not a save_pretrained model directory.", location=location)
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise InvalidInput(f"{config_file} is not valid JSON ({error}).", location=location) from error


def model_roots() -> list[Path]:
    return [Path(os.path.realpath(root)) for root in getattr(settings, "RLHF_MODEL_ROOTS", []) or []]


def shared_model_dirs(*, limit: int = 200) -> list[str]:
    """The model directories the operator shared: the folders directly under each model root that hold a
    config.json (what the launch form offers; deeper ones may still be typed)."""
    found = []
    for root in model_roots():
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        found += [str(child) for child in children if (child / "config.json").is_file()
                  and not Path(os.path.realpath(child)).is_relative_to(artifact_root())]
    return found[:limit]


def typed_model_dir(value, *, location: str) -> str:
    """A model a user typed: its resolved directory under an operator's model root (or the hub id, where the
    hub is on). One answer for missing, forbidden and non-model paths."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("Choose a model.", location=location)
    value = value.strip()
    if not _looks_like_path(value) and HUB_ID.match(value):
        if not hub_allowed():
            raise _hub_refused(value, location)
        return value
    roots = model_roots()
    refused = InvalidInput(
        "Not an allowed model directory: choose a registered model of this project, or a save_pretrained directory "
        "under the operator's model roots (" + (", ".join(map(str, roots)) or "none configured") + ").",
        location=location)
    if "\x00" in value or ".." in Path(value).parts or not Path(value).is_absolute():
        raise refused
    resolved = Path(os.path.realpath(value))
    if resolved.is_relative_to(artifact_root()) or not any(resolved.is_relative_to(root) and resolved != root
                                                         for root in roots):
        raise refused
    try:
        _model_config_check(resolved, value=value, location=location)
    except InvalidInput:
        raise refused from None
    return str(resolved)


def typed_model_fields_check(config: dict) -> dict:
    """The config with every model setting a user typed checked by ``typed_model_dir`` (and resolved)."""
    config = dict(config)
    for name in MODEL_FIELDS:
        if isinstance(config.get(name), str) and config[name]:  # other types: the config parser says why
            config[name] = typed_model_dir(config[name], location=f"config.{name}")
    return config


def model_fields_stored(config: dict) -> dict:
    """The config with every model setting inside ARTIFACT_ROOT in its stored, root-relative form."""
    return {**config, **{name: model_path_stored(config[name]) for name in MODEL_FIELDS
                         if isinstance(config.get(name), str)}}


def model_fields_resolved(config: dict, *, user_launched: bool) -> dict:
    """The config with every model setting as this machine loads it: a stored form resolved against this
    machine's ARTIFACT_ROOT (InvalidInput when it leads outside: ``..``, a symlink out). For a run a user
    launched, an absolute path must still resolve (symlinks followed, no ``..``) inside the artifact root or
    under a model root; the operator's (``user_launched=False``) may name any directory, as at creation."""
    config = dict(config)
    for name in MODEL_FIELDS:
        value = config.get(name)
        if not isinstance(value, str) or not value:
            continue
        config[name] = value = model_path_resolved(value, location=f"config.{name}")
        if user_launched and (_looks_like_path(value) or Path(value).is_absolute()):
            _user_model_path_check(value, location=f"config.{name}")
    return config


def _user_model_path_check(value: str, *, location: str) -> None:
    """A user's run names an absolute directory only inside the artifact root or under a model root."""
    refused = InvalidInput(f"{value[:300]} lies outside this machine's artifact root and model roots "
                           "(RLHF_MODEL_ROOTS).", location=location)
    if "\x00" in value or ".." in Path(value).parts or not Path(value).is_absolute():
        raise refused
    resolved, root = Path(os.path.realpath(value)), artifact_root()
    inside_root = resolved != root and resolved.is_relative_to(root)
    if not inside_root and not any(resolved.is_relative_to(r) and resolved != r for r in model_roots()):
        raise refused
