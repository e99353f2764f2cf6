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


def _update_in_batches(model, rows, field: str, new_value) -> None:
    """Set ``field`` to ``new_value(row)`` on every row where that returns a value (None: leave the row), saved
    ``BATCH_SIZE`` rows at a time."""
    changed = []
    for row in rows.iterator(chunk_size=BATCH_SIZE):
        value = new_value(row)
        if value is not None:
            setattr(row, field, value)
            changed.append(row)
        if len(changed) >= BATCH_SIZE:
            model.objects.bulk_update(changed, [field])
            changed = []
    if changed:
        model.objects.bulk_update(changed, [field])


def _rewrite(apps, convert) -> None:
    root = _root()
    TrainingRun = apps.get_model("training", "TrainingRun")
    ModelArtifact = apps.get_model("training", "ModelArtifact")

    def run_config(run):
        config = run.config
        if not isinstance(config, dict):
            return None
        updated = {**config, **{name: convert(config[name], root) for name in MODEL_FIELDS if name in config}}
        return updated if updated != config else None

    def artifact_base_model(artifact):
        value = convert(artifact.base_model, root)
        changed = value != artifact.base_model and len(value) <= BASE_MODEL_MAX_LENGTH  # never a truncated path
        return value if changed else None

    _update_in_batches(TrainingRun, TrainingRun.objects.only("pk", "config").order_by("pk"), "config", run_config)
    _update_in_batches(ModelArtifact, ModelArtifact.objects.exclude(base_model="").only("pk", "base_model")
                       .order_by("pk"), "base_model", artifact_base_model)


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
