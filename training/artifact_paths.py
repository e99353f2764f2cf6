"""Where a run's files and the models live on disk: every path under ARTIFACT_ROOT is computed here.

    ARTIFACT_ROOT/
      runs/<run id>/        run_output_dir: checkpoints/, model/ or policy/ (what the run registers),
                            logs/attempt-<n>.log (run_log_path), summary/
      base/<project slug>/  base_models_dir: the tiny base models and their tokenizer

An artifact's row stores its directory relative to the root (``artifact_path_stored``); every read or write
of an artifact's files resolves it back through ``artifact_path_contained``, which refuses anything outside
the root.

A run's config and an adapter's ``base_model`` name models by path. A model inside the root is stored as
``$RLHF_ARTIFACT_ROOT/`` + its stored form (``model_path_stored``), which each worker resolves against its own
root when the run starts (``model_path_resolved``, through ``artifact_path_contained``): machines may mount
the shared root at different paths (docs/training_runs.md, "Several machines: one artifact root"). The prefix
keeps the stored form apart from a hub id (``org/model``) and from a path relative to the working directory.
Anything else (a directory under an operator's model root, a hub id) is kept as given.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.errors import InvalidInput


def artifact_root() -> Path:
    """ARTIFACT_ROOT with every symlink followed."""
    return Path(settings.ARTIFACT_ROOT).resolve()


def artifact_path_contained(path: str | Path, *, location: str = "path") -> Path:
    """``path`` (relative to ARTIFACT_ROOT, or absolute) resolved with every symlink followed and ``..``
    collapsed; InvalidInput unless the result lies strictly inside ARTIFACT_ROOT (the root itself holds every
    project's runs, so it is refused too). Every read and write of an artifact's files goes through this."""
    root = artifact_root()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidInput("The artifact's path lies outside the artifact root.", location=location)
    return resolved


def artifact_path_stored(path: str | Path) -> str:
    """What an artifact's row stores: its directory relative to ARTIFACT_ROOT (refused outside it)."""
    return str(artifact_path_contained(path).relative_to(artifact_root()))


ROOT_PREFIX = "$RLHF_ARTIFACT_ROOT/"  # a model path in a run config: relative to the worker's artifact root


def model_path_stored(value: str) -> str:
    """A model setting as a run config (or an adapter's ``base_model``) stores it: an absolute path inside
    ARTIFACT_ROOT (symlinks followed) becomes ``$RLHF_ARTIFACT_ROOT/<artifact_path_stored>``; anything else
    (empty, a hub id, a directory outside the root, an already stored form) is returned unchanged."""
    if not isinstance(value, str) or not value or value.startswith(ROOT_PREFIX) or "\x00" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        return value
    resolved, root = path.resolve(), artifact_root()
    if resolved == root or not resolved.is_relative_to(root):
        return value
    return ROOT_PREFIX + artifact_path_stored(resolved)


def model_path_resolved(value: str, *, location: str = "path") -> str:
    """A stored model setting as this machine loads it: ``$RLHF_ARTIFACT_ROOT/<relative>`` resolved against this
    machine's ARTIFACT_ROOT with every symlink followed; InvalidInput for ``..``, an absolute or empty remainder,
    or a result outside the root (``artifact_path_contained``). Anything else is returned unchanged (an absolute
    path stored before issue #14 loads as before where it exists)."""
    if not isinstance(value, str) or not value.startswith(ROOT_PREFIX):
        return value
    relative = value[len(ROOT_PREFIX):]
    refused = InvalidInput("The model's path lies outside the artifact root.", location=location)
    if not relative or "\x00" in relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise refused
    try:
        return str(artifact_path_contained(relative, location=location))
    except InvalidInput:  # a symlink that leads out of the root
        raise refused from None


def artifact_base_model(*, artifact) -> str:
    """The base model an adapter artifact was trained on, as this machine loads it (``model_path_resolved``)."""
    return model_path_resolved(artifact.base_model, location="base_model")


def artifact_dir(*, artifact) -> Path:
    """The artifact's directory, resolved; InvalidInput when the stored path leads outside ARTIFACT_ROOT."""
    return artifact_path_contained(artifact.path)


def run_output_dir(*, run_id: int) -> Path:
    """``ARTIFACT_ROOT/runs/<id>/``: checkpoints/, the saved model and logs/ of every attempt of the run."""
    return Path(settings.ARTIFACT_ROOT) / "runs" / str(run_id)


def run_log_path(*, run_id: int, attempt: int) -> Path:
    """The log of one attempt of a run (the training process's stdout and stderr)."""
    return run_output_dir(run_id=run_id) / "logs" / f"attempt-{attempt}.log"


def base_models_dir(*, project_slug: str) -> Path:
    """``ARTIFACT_ROOT/base/<slug>/``: where a project's tiny base models are built (inside the root only)."""
    return artifact_path_contained(Path("base") / project_slug, location="project")
