"""Model paths inside ARTIFACT_ROOT in their stored, root-relative form, for rows written before issue #14.

Forward: every ``TrainingRun.config`` model setting (``base_model``, ``adapter``, ``reward_model``,
``reference_model``) and every ``ModelArtifact.base_model`` (an adapter's base) that is an absolute path inside
settings.ARTIFACT_ROOT (both resolved with every symlink followed, at migration time) becomes
``$RLHF_ARTIFACT_ROOT/<path relative to the root>``, as ``training.artifact_paths.model_path_stored`` writes it
for new rows. Anything else is left alone: paths outside the root (an operator's model root), hub ids, values
already stored, non-strings, the root itself.

Backward: every stored form becomes an absolute path under the current root (resolved); a stored form with
``..`` or an absolute remainder is left alone.

The path logic is copied here, not imported, so that this migration keeps doing what it did when the
application code changes. ROOT_PREFIX must equal ``training.artifact_paths.ROOT_PREFIX`` (a test checks it).
"""
import os

from django.conf import settings
from django.db import migrations

ROOT_PREFIX = "$RLHF_ARTIFACT_ROOT/"
MODEL_FIELDS = ("base_model", "adapter", "reward_model", "reference_model")
BASE_MODEL_MAX_LENGTH = 500  # ModelArtifact.base_model
BATCH_SIZE = 500


def _root() -> str:
    return os.path.realpath(os.fspath(settings.ARTIFACT_ROOT))


def path_stored(value, root: str):
    """An absolute path strictly inside ``root`` (symlinks followed) as its stored form; anything else as is."""
    if not isinstance(value, str) or not value or value.startswith(ROOT_PREFIX) or "\x00" in value:
        return value
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        return value
    resolved = os.path.realpath(path)
    if resolved == root or os.path.commonpath([resolved, root]) != root:
        return value
    return ROOT_PREFIX + os.path.relpath(resolved, root)


def path_absolute(value, root: str):
    """A stored form as the absolute path under ``root``; anything else, or a remainder that is empty,
    absolute or holds ``..``, as is."""
    if not isinstance(value, str) or not value.startswith(ROOT_PREFIX) or "\x00" in value:
        return value
    relative = value[len(ROOT_PREFIX):]
    if not relative or os.path.isabs(relative) or ".." in relative.split("/"):
        return value
    return os.path.join(root, relative)


def _rewrite(apps, convert) -> None:
    root = _root()
    TrainingRun = apps.get_model("training", "TrainingRun")
    ModelArtifact = apps.get_model("training", "ModelArtifact")

    changed = []
    for run in TrainingRun.objects.only("pk", "config").order_by("pk").iterator(chunk_size=BATCH_SIZE):
        config = run.config
        if not isinstance(config, dict):
            continue
        updated = {**config, **{name: convert(config[name], root) for name in MODEL_FIELDS if name in config}}
        if updated != config:
            run.config = updated
            changed.append(run)
        if len(changed) >= BATCH_SIZE:
            TrainingRun.objects.bulk_update(changed, ["config"])
            changed = []
    if changed:
        TrainingRun.objects.bulk_update(changed, ["config"])

    changed = []
    artifacts = ModelArtifact.objects.exclude(base_model="").only("pk", "base_model").order_by("pk")
    for artifact in artifacts.iterator(chunk_size=BATCH_SIZE):
        value = convert(artifact.base_model, root)
        if value != artifact.base_model and len(value) <= BASE_MODEL_MAX_LENGTH:  # never a truncated path
            artifact.base_model = value
            changed.append(artifact)
        if len(changed) >= BATCH_SIZE:
            ModelArtifact.objects.bulk_update(changed, ["base_model"])
            changed = []
    if changed:
        ModelArtifact.objects.bulk_update(changed, ["base_model"])


def forward(apps, schema_editor) -> None:
    _rewrite(apps, path_stored)


def backward(apps, schema_editor) -> None:
    _rewrite(apps, path_absolute)


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0005_policy_health"),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]
