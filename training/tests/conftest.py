"""Fixtures for the training tests: a ranked project, a fake model directory, a captured task queue."""
import json

import pytest


def rank_all(project, labeler, *, best_first=True):
    """Rank every prompt of the project: responses in position order (the fixture's "Answer 0" best)."""
    from annotation.services import ranking_record

    for prompt in project.prompts.order_by("id"):
        ids = list(prompt.samples.order_by("position").values_list("id", flat=True))
        tiers = [[i] for i in (ids if best_first else ids[::-1])]
        ranking_record(prompt=prompt, labeler=labeler, tiers=tiers, source="human")


@pytest.fixture
def ranked(make_user, make_project):
    """(project, researcher, labeler): K=4, 6 prompts, every prompt ranked once by the labeler."""
    researcher, labeler = make_user("rita"), make_user("lars")
    project = make_project(slug="ranked", k=4, prompts=6, labelers=[labeler], researchers=[researcher])
    rank_all(project, labeler)
    return project, researcher, labeler


@pytest.fixture
def model_dir(tmp_path, settings):
    """A directory that looks like a save_pretrained model (enough for config validation), under an operator
    model root (``RLHF_MODEL_ROOTS``), so users may type it too."""
    settings.RLHF_MODEL_ROOTS = [str(tmp_path)]
    path = tmp_path / "base-model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


@pytest.fixture
def stored_model(artifact_root):
    """A model directory inside ARTIFACT_ROOT (where registered artifacts live), for ModelArtifact rows."""
    path = artifact_root / "base" / "fixture" / "model"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


@pytest.fixture
def sent(monkeypatch):
    """Run ids sent to training.tasks.execute_run (the broker is not touched)."""
    from training import tasks

    ids: list[int] = []
    monkeypatch.setattr(tasks.execute_run, "delay", lambda run_id: ids.append(run_id))
    return ids


@pytest.fixture
def artifact_root(tmp_path, settings):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return settings.ARTIFACT_ROOT


class WorkerProcesses:
    """Real Celery worker processes (solo pool, queues gpu+default) for end-to-end tests; logs under tmp_path."""

    def __init__(self, *, env: dict, log_dir, name: str) -> None:
        self.env, self.log_dir, self.name = env, log_dir, name
        self.started: list = []
        self.groups: list[int] = []  # process groups of workers started behind a prefix

    def start(self, *, env: dict | None = None, cwd=None, name: str | None = None, prefix: tuple = ()):
        """One worker: ``env`` replaces the shared environment, ``cwd`` the repository as working directory,
        ``name`` the node name's stem; ``prefix`` goes before the command (e.g. strace)."""
        import subprocess
        import sys
        import uuid
        from pathlib import Path

        log = open(self.log_dir / f"worker-{len(self.started)}.log", "wb")
        cmd = [*prefix, sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "gpu,default", "-c", "1",
               "--pool", "solo", "-n", f"{name or self.name}-{uuid.uuid4().hex[:8]}@%h", "--without-gossip",
               "--without-mingle", "--loglevel", "INFO"]
        # Behind a prefix the worker is not our child: its own process group lets stop_all end it (and its
        # training processes) by the group's id.
        proc = subprocess.Popen(cmd, cwd=cwd or Path(__file__).resolve().parents[2], env=env or self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=bool(prefix))
        self.started.append(proc)
        if prefix:
            self.groups.append(proc.pid)
        return proc

    def stop_all(self) -> None:
        import os
        import signal

        for group in self.groups:  # whatever is left of a worker behind a prefix, its training processes too
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in sorted(self.log_dir.glob("worker-*.log")):  # shown by pytest when a test fails
            print(f"==> {log.name}\n" + log.read_text(errors="replace")[-3000:])
