"""Where a run's files and the models live on disk: every path under ARTIFACT_ROOT is computed here.

    ARTIFACT_ROOT/
      runs/<run id>/        run_output_dir: checkpoints/, model/ or policy/ (what the run registers),
                            logs/attempt-<n>.log (run_log_path), summary/
      base/<project slug>/  base_models_dir: the tiny base models and their tokenizer

An artifact's row stores its directory relative to the root (``artifact_path_stored``); every read or write
of an artifact's files resolves it back through ``artifact_path_contained``, which refuses anything outside
the root.
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
