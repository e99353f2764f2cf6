"""training 0006 rewrites the model paths of rows written before issue #14: an absolute path inside ARTIFACT_ROOT
(in a run's config, or an adapter artifact's ``base_model``) becomes ``$RLHF_ARTIFACT_ROOT/<relative>``; a path
outside the root, a hub id, a value already stored and a non-string stay as they are. Backwards, the stored
forms become absolute paths under the current root again.

As in ``lab/tests/test_migrations.py``: Django's MigrationExecutor takes the database back to training 0005,
the rows are written with the models as they were then, and the executor migrates forward (and back, and
forward again). On PostgreSQL only: the test transaction rolls the migrations back with everything else."""
import importlib

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from training.artifact_paths import ROOT_PREFIX

BEFORE = [("training", "0005_policy_health")]
MIGRATION = importlib.import_module("training.migrations.0006_model_paths_stored")


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def _apps(executor):
    applied = MigrationExecutor(connection).loader.applied_migrations  # read back from django_migrations
    return executor.loader.project_state(list(applied)).apps


@pytest.fixture
def roots(tmp_path, settings):
    """(root as configured: a symlink, the real root): paths are compared with every symlink followed."""
    real = tmp_path / "real-artifacts"
    (real / "base" / "demo" / "model").mkdir(parents=True)
    (real / "runs" / "3" / "model").mkdir(parents=True)
    link = tmp_path / "artifacts"
    link.symlink_to(real)
    settings.ARTIFACT_ROOT = link
    return link, real.resolve()


def test_the_prefix_is_the_one_the_application_writes():
    assert MIGRATION.ROOT_PREFIX == ROOT_PREFIX


@pytest.mark.django_db
def test_old_absolute_model_paths_inside_the_root_are_stored_and_restored(roots):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (transactional DDL); this run uses " + connection.vendor)
    link, real = roots
    inside = str(link / "base" / "demo" / "model")  # through the configured symlink
    inside_real = str(real / "runs" / "3" / "model")
    stored_before = ROOT_PREFIX + "base/demo/model"
    original = {
        "base_model": inside, "adapter": inside_real, "reward_model": "/opt/models/x",
        "reference_model": "org/model", "lr": 1e-4,
    }
    others = [
        {"base_model": "/opt/models/x"}, {"base_model": "org/model"}, {"base_model": stored_before},
        {"base_model": 7, "adapter": None, "reward_model": ["x"]}, {"base_model": str(real)},  # the root itself
        {"base_model": str(real) + "-sibling/model"}, {"base_model": ""}, {},
    ]

    executor = _migrate(BEFORE)
    try:
        assert ("training", "0006_model_paths_stored") not in MigrationExecutor(connection).loader.applied_migrations
        apps = _apps(executor)
        Project = apps.get_model("annotation", "Project")
        Run, Artifact = apps.get_model("training", "TrainingRun"), apps.get_model("training", "ModelArtifact")
        project = Project.objects.create(slug="old", name="Old", k=2, overlap=1)
        run = Run.objects.create(project=project, kind="dpo", config=original).pk
        other_runs = [Run.objects.create(project=project, kind="sft", config=c).pk for c in others]
        adapter = Artifact.objects.create(project=project, kind="policy", name="a", path="runs/3/model",
                                          is_adapter=True, base_model=inside).pk
        other_artifacts = {Artifact.objects.create(project=project, kind="policy", name=f"o{i}", path="x",
                                                   base_model=value).pk: value
                           for i, value in enumerate(["/opt/models/x", "org/model", stored_before, ""])}
    finally:
        executor = _migrate(executor.loader.graph.leaf_nodes())

    def read(apps):
        Run, Artifact = apps.get_model("training", "TrainingRun"), apps.get_model("training", "ModelArtifact")
        return (Run.objects.get(pk=run).config, [Run.objects.get(pk=pk).config for pk in other_runs],
                Artifact.objects.get(pk=adapter).base_model,
                {pk: Artifact.objects.get(pk=pk).base_model for pk in other_artifacts})

    config, configs, base_model, bases = read(_apps(executor))
    assert config == {**original, "base_model": stored_before, "adapter": ROOT_PREFIX + "runs/3/model"}
    assert configs == others and bases == other_artifacts  # only the paths inside the root were rewritten
    assert base_model == stored_before

    executor = _migrate(BEFORE)
    try:
        config, configs, base_model, bases = read(_apps(executor))
        absolute = str(real / "base" / "demo" / "model")  # under the current root, symlinks followed
        assert config == {**original, "base_model": absolute}
        assert configs == [{**c, "base_model": absolute} if c.get("base_model") == stored_before else c
                           for c in others]
        assert base_model == absolute
        assert bases == {pk: absolute if v == stored_before else v for pk, v in other_artifacts.items()}
    finally:
        executor = _migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.parametrize("value,expected", [
    ("/r/a/b", ROOT_PREFIX + "a/b"), ("/r", "/r"), ("/r/", "/r/"), ("/rx/a", "/rx/a"), ("/opt/models/x", "/opt/models/x"),
    ("org/model", "org/model"), ("gpt2", "gpt2"), ("a/../b", "a/../b"), (ROOT_PREFIX + "a", ROOT_PREFIX + "a"),
    ("", ""), (None, None), (3, 3), ("/r/a/../b", ROOT_PREFIX + "b"), ("/r/../etc", "/r/../etc"),
])
def test_path_stored(value, expected):
    assert MIGRATION.path_stored(value, "/r") == expected


@pytest.mark.parametrize("value,expected", [
    (ROOT_PREFIX + "a/b", "/r/a/b"), (ROOT_PREFIX, ROOT_PREFIX), (ROOT_PREFIX + "/etc", ROOT_PREFIX + "/etc"),
    (ROOT_PREFIX + "a/../../x", ROOT_PREFIX + "a/../../x"), ("/r/a", "/r/a"), ("org/model", "org/model"), (5, 5),
])
def test_path_absolute(value, expected):
    assert MIGRATION.path_absolute(value, "/r") == expected
