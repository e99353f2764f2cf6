"""Two GPU machines, one artifact root: the shared-filesystem design of docs/training_runs.md, proved with two
REAL Celery workers (``test_worker_e2e``'s fixtures) that share only the database, the broker and the artifact
root. Each has its own HOME, HF_HOME, XDG_CACHE_HOME, TMPDIR and working directory (its "local disk") and runs
under ``strace -f``, which records every file the worker and its training processes open, create, rename or
delete. Which worker takes which run is controlled by starting them one after the other.

Worker A starts a reward run and is SIGKILLed mid-run (a machine lost); worker B resumes it from the
checkpoint A wrote and finishes it; A, restarted, then trains the same config uninterrupted. Asserted: B
opened A's checkpoint files at their path under the shared root and holds no model file of its own; the
attempts were recorded under different workers; the resumed model equals the uninterrupted one bit for bit,
and so do the per-step losses; what B saved is readable beyond its owner (the mode of a plain mkdir); no
process of either worker wrote outside the artifact root, its own scratch directories and /dev.

And why the root need not be mounted at the same path everywhere (issue #14): a run's config names the models
inside the root relative to it (``$RLHF_ARTIFACT_ROOT/…``), and each worker resolves them against its own root.
A run started under one root resumes on a worker whose root is a copy of that tree at another path; a run
created under one root runs after the tree moved. What the workers resolve is still held to the root: a stored
path with ``..``, a symlink out of the root or a user's directory swapped for a symlink out fails the run.
"""
import hashlib
import os
import re
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from annotation.errors import InvalidInput
from training import runner, services
from training.artifact_paths import ROOT_PREFIX, artifact_dir, run_output_dir
from training.jobs.base import run_config
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.run_process import EXIT_FAILED, EXIT_OK
from training.selectors import run_disclosed
from training.tests.conftest import WorkerProcesses, rank_all
from training.tests.test_worker_e2e import CONFIG, _alive, _child_pids, _wait
from training.tests.test_worker_e2e import e2e_project, worker_env  # noqa: F401  (pytest fixtures, by name)

Status = TrainingRun.Status
REPO = Path(__file__).resolve().parents[2]
RUN_CONFIG = {**CONFIG, "max_steps": 40}
SCRATCH = ("home", "hf", "cache", "tmp", "cwd")  # what is local to one machine
STRACE = ("strace", "-f", "--seccomp-bpf", "-qq", "-y", "-s", "4096", "-e",
          "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,link,linkat,"
          "symlink,symlinkat,truncate")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


class Machine:
    """One worker machine: its scratch directories, its environment and its strace log."""

    def __init__(self, name: str, base: Path, shared_env: dict) -> None:
        self.name, self.scratch = name, base / name
        for sub in SCRATCH:
            (self.scratch / sub).mkdir(parents=True)
        self.env = {**shared_env, "HOME": str(self.scratch / "home"), "HF_HOME": str(self.scratch / "hf"),
                    "XDG_CACHE_HOME": str(self.scratch / "cache"), "TMPDIR": str(self.scratch / "tmp"),
                    "PYTHONDONTWRITEBYTECODE": "1",  # as the Dockerfile sets: no .pyc next to the code
                    "PYTHONPATH": str(REPO)}  # the code, wherever the working directory is
        self.traces: list[Path] = []

    def start(self, workers: WorkerProcesses):
        trace = self.scratch.parent / f"strace-{self.name}-{len(self.traces)}.txt"
        self.traces.append(trace)
        return workers.start(env=self.env, cwd=self.scratch / "cwd", name=self.name,
                             prefix=(*STRACE, "-o", str(trace)))

    def calls(self) -> list[tuple[int, str, str]]:
        """(pid, syscall, the rest of the line) of every successful traced call."""
        return [call for trace in self.traces for call in _strace_calls(trace.read_text(errors="replace"))]


def _strace_calls(text: str):
    pending: dict[str, str] = {}
    for line in text.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")]
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        call = re.match(r"(\w+)\((.*)\) += (-?\d+)", rest)
        if call and not call.group(3).startswith("-"):
            yield int(pid), call.group(1), rest


def _paths_read(calls) -> set[str]:
    """Files opened read-only (the path strace resolved for the returned descriptor)."""
    out = set()
    for _, name, rest in calls:
        if name in ("open", "openat") and not any(f in rest for f in WRITE_FLAGS):
            if match := re.search(r"= \d+<(.*)>$", rest):
                out.add(match.group(1))
    return out


def _paths_written(calls) -> set[str]:
    """Every path a traced call created, opened for writing, renamed (both ends), linked or removed."""
    out = set()
    for _, name, rest in calls:
        if name in ("open", "openat"):
            if any(f in rest for f in WRITE_FLAGS):
                out.add(re.search(r"= \d+<(.*)>$", rest).group(1))
            continue
        # every string argument, made absolute with the directory descriptor before it when relative
        for dirfd, path in re.findall(r'(?:((?:AT_FDCWD|\d+)<[^>]*>), )?"([^"]*)"', rest):
            if not path.startswith("/"):  # strace -y names the directory of the descriptor, cwd included
                assert dirfd, f"a relative path whose directory strace did not name: {rest}"
                path = os.path.join(dirfd.split("<", 1)[1][:-1], path)
            out.add(os.path.normpath(path))
    return out


def _wait_on(worker, run_id: int, until, timeout: float = 300.0) -> TrainingRun:
    """``_wait`` that gives up as soon as the worker process has exited (its log is printed at teardown)."""
    run = _wait(run_id, lambda r: until(r) or worker.poll() is not None, timeout=timeout)
    assert until(run), f"the worker exited ({worker.poll()}) before the run got there: {run.status} step {run.step}"
    return run


def _worker_pid(run: TrainingRun) -> int:
    """The worker process (under strace) that claimed the run: it records ``host:pid``."""
    return int(run.worker.rsplit(":", 1)[1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    (weights,) = model_dir.glob("*.safetensors")
    return load_file(weights)


def _losses(run: TrainingRun) -> list[float]:
    return [p.values["loss"] for p in MetricPoint.objects.filter(run=run, split="train").order_by("step")]


@pytest.fixture
def machines(tmp_path, worker_env):
    if shutil.which("strace") is None:
        pytest.skip("needs strace to record what the workers write")
    return tuple(Machine(name, tmp_path / "machines", worker_env) for name in ("machine-a", "machine-b"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_lost_on_one_machine_resumes_on_another_from_the_shared_root(e2e_project, machines, tmp_path, settings):
    started = time.monotonic()
    project, base = e2e_project
    a, b = machines
    root = Path(django_settings.ARTIFACT_ROOT).resolve()
    workers = WorkerProcesses(env={}, log_dir=tmp_path, name="unused")
    try:
        # Machine A trains until a few checkpoints exist; then the machine is lost: its training process
        # frozen where it stands, its worker SIGKILLed (the child dies with it).
        worker = a.start(workers)
        run = services.run_create(project=project, kind="reward", config=RUN_CONFIG, base_artifact=base)
        run = _wait_on(worker, run.pk, lambda r: r.step >= 12)
        (child_a,) = _child_pids(run)
        os.kill(child_a, signal.SIGSTOP)
        worker_a = _worker_pid(run)
        os.kill(worker_a, signal.SIGKILL)
        worker.wait(timeout=30)  # strace ends with its last tracee
        assert not _alive(child_a) and not _alive(worker_a)
        killed = TrainingRun.objects.get(pk=run.pk)
        assert killed.status == Status.RUNNING and killed.attempts == 1 and killed.step < 40, killed.log_tail
        checkpoints = run_output_dir(run_id=run.pk) / "checkpoints"
        written_by_a = {p.name: {f.relative_to(p).as_posix(): _sha256(f) for f in p.rglob("*") if f.is_file()}
                        for p in checkpoints.iterdir() if p.name.startswith("step-")}
        last = max(written_by_a)
        assert int(last.split("-")[1]) >= 5, written_by_a

        # Machine B takes the re-queued run and finishes it.
        later = timezone.now() + timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 1)
        assert services.runs_reconcile(now=later) == 1
        worker = b.start(workers)
        resumed = _wait_on(worker, run.pk, lambda r: r.is_terminal)
        assert resumed.status == Status.SUCCEEDED, resumed.error + resumed.log_tail
        assert resumed.attempts == 2 and resumed.step == resumed.total_steps == 40
        assert f"resumed from {last} " in resumed.log_tail, resumed.log_tail
        assert resumed.worker and resumed.worker != killed.worker  # host:pid of B, not of A
        for attempt, worker_name in ((1, killed.worker), (2, resumed.worker)):  # both stay in the run's log
            assert f"attempt {attempt} on {worker_name}: training process" in resumed.log_tail, resumed.log_tail
        (_, child_b) = _child_pids(resumed)
        os.kill(_worker_pid(resumed), signal.SIGTERM)  # warm shutdown (nothing running); strace exits with it
        assert worker.wait(timeout=60) == 0

        # Machine A, restarted, trains the same config without interruption: what one worker gives.
        worker = a.start(workers)
        whole = services.run_create(project=project, kind="reward", config=RUN_CONFIG, base_artifact=base)
        whole = _wait_on(worker, whole.pk, lambda r: r.is_terminal)
        assert whole.status == Status.SUCCEEDED and whole.attempts == 1, whole.error + whole.log_tail
        assert "resumed" not in whole.log_tail
        os.kill(_worker_pid(whole), signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        workers.stop_all()

    # Same data, same weights, same per-step losses: the run did not notice it changed machines.
    assert whole.snapshot.content_hash == resumed.snapshot.content_hash
    trained, reference, initial = (_tensors(artifact_dir(artifact=a)) for a in (resumed.artifact, whole.artifact, base))
    assert trained.keys() == reference.keys()
    assert all(bool((trained[k] == reference[k]).all()) for k in trained)
    assert not all(bool((trained[k] == initial[k]).all()) for k in trained if k in initial)  # training changed them
    assert _losses(resumed) == _losses(whole) and len(_losses(whole)) == 40
    # What B saved has the mode of the directories above it (not mkdtemp's 0700): another uid can read it.
    for saved in (artifact_dir(artifact=resumed.artifact), *checkpoints.glob("step-*")):
        assert saved.stat().st_mode == checkpoints.stat().st_mode, saved

    # B read the checkpoint A wrote, at its path under the shared root, from its training process.
    calls_a, calls_b = a.calls(), b.calls()
    assert child_a in {pid for pid, _, _ in calls_a} and child_b in {pid for pid, _, _ in calls_b}
    read_by_b = _paths_read(pid_call for pid_call in calls_b if pid_call[0] == child_b)
    resumed_from = {name for name in written_by_a[last] if name.endswith((".safetensors", "state.pt"))}
    assert resumed_from == {"model/model.safetensors", "state.pt"}, written_by_a[last]
    for name in resumed_from:  # the weights, optimizer, scheduler and RNG states A wrote (hashed after A died)
        assert str(checkpoints.resolve() / last / name) in read_by_b, (name, sorted(read_by_b)[-20:])
    assert not [p for p in b.scratch.rglob("*") if p.suffix in (".safetensors", ".pt", ".bin")]

    # Nothing outside the artifact root, the machine's own scratch and /dev was written by either machine.
    for machine, calls in ((a, calls_a), (b, calls_b)):
        written = _paths_written(calls)
        outside = sorted(p for p in written if not (Path(p).is_relative_to(root) or p.startswith("/dev/")
                                                    or Path(p).is_relative_to(machine.scratch)))
        assert not outside, (machine.name, outside)
        assert any(Path(p).is_relative_to(root / "runs") for p in written)
    print(f"two machines, one artifact root: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_started_under_one_root_resumes_on_a_worker_whose_root_is_a_copy_at_another_path(
        make_user, make_project, worker_env, tmp_path, settings):
    """Machine A's worker has its artifact root at mnt-a/…, machine B's at mnt-b/… (its own RLHF_VAR_DIR, under
    which the test settings put ARTIFACT_ROOT). A trains to a checkpoint and is lost; the tree is copied to
    mnt-b and mnt-a removed; B resumes the run from A's checkpoint at its own path and finishes it."""
    roots = {name: tmp_path / name / "var" / "test-artifacts" for name in ("mnt-a", "mnt-b")}
    settings.ARTIFACT_ROOT = roots["mnt-a"]
    labeler = make_user("lars")
    project = make_project(slug="copied", k=4, prompts=16, labelers=[labeler])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", "copied", "--hidden", "32", "--vocab-size", "300")
    base = ModelArtifact.objects.get(project=project, name="tiny-reward-model")
    workers = WorkerProcesses(env={}, log_dir=tmp_path, name="unused")
    try:
        worker = workers.start(env={**worker_env, "RLHF_VAR_DIR": str(tmp_path / "mnt-a" / "var")}, name="machine-a")
        run = services.run_create(project=project, kind="reward", config=RUN_CONFIG, base_artifact=base)
        assert run.config["base_model"] == f"{ROOT_PREFIX}base/copied/tiny-reward-model"
        run = _wait_on(worker, run.pk, lambda r: r.step >= 7)  # a checkpoint at step 5 exists
        (child_a,) = _child_pids(run)
        os.kill(child_a, signal.SIGSTOP)
        worker.kill()  # machine A is lost (its training process dies with its worker)
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child_a) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_a)
        killed = TrainingRun.objects.get(pk=run.pk)
        assert killed.status == Status.RUNNING and killed.step < 40, killed.log_tail
        last = max(p.name for p in (run_output_dir(run_id=run.pk) / "checkpoints").glob("step-*"))

        # The storage is copied to machine B's mount point; nothing is left at A's.
        shutil.copytree(tmp_path / "mnt-a", tmp_path / "mnt-b", symlinks=True)
        shutil.rmtree(tmp_path / "mnt-a")
        settings.ARTIFACT_ROOT = roots["mnt-b"]
        later = timezone.now() + timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 1)
        assert services.runs_reconcile(now=later) == 1
        worker = workers.start(env={**worker_env, "RLHF_VAR_DIR": str(tmp_path / "mnt-b" / "var")}, name="machine-b")
        resumed = _wait_on(worker, run.pk, lambda r: r.is_terminal)
    finally:
        workers.stop_all()
    assert resumed.status == Status.SUCCEEDED, resumed.error + resumed.log_tail
    assert resumed.attempts == 2 and resumed.step == resumed.total_steps == 40
    assert f"resumed from {last} " in resumed.log_tail, resumed.log_tail
    assert resumed.config["base_model"] == f"{ROOT_PREFIX}base/copied/tiny-reward-model"  # stored form, unchanged
    saved = artifact_dir(artifact=resumed.artifact)
    assert saved.is_relative_to(roots["mnt-b"].resolve()) and (saved / "config.json").is_file()
    assert not (tmp_path / "mnt-a").exists()


@pytest.mark.django_db
def test_a_run_created_under_one_root_runs_after_the_tree_moved_to_another(
        make_user, make_project, tmp_path, settings):
    """The run is created (by a researcher, through the service) with the root at mnt-a; the storage is then
    mounted at mnt-b (the directory moved, ARTIFACT_ROOT changed) and the run trains there. Its config, on the
    run page and in the API, shows the stored form to researchers and admins alike."""
    settings.ARTIFACT_ROOT = tmp_path / "mnt-a" / "artifacts"
    researcher, labeler, admin = make_user("rita"), make_user("lars"), make_user("ada", is_superuser=True)
    project = make_project(slug="moved", k=4, prompts=4, labelers=[labeler], researchers=[researcher])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", "moved", "--hidden", "32", "--vocab-size", "300")
    base = ModelArtifact.objects.get(project=project, name="tiny-reward-model")
    assert not Path(base.path).is_absolute()
    run = services.run_create(project=project, kind="reward", config={**CONFIG, "max_steps": 1}, base_artifact=base,
                              user=researcher)
    stored = ROOT_PREFIX + base.path
    assert run.config["base_model"] == stored == "$RLHF_ARTIFACT_ROOT/base/moved/tiny-reward-model"
    for viewer in (researcher, admin):
        assert run_disclosed(run=run, user=viewer)["config"]["base_model"] == stored

    (tmp_path / "mnt-a").rename(tmp_path / "mnt-b")  # the worker's machine mounts the same storage elsewhere
    settings.ARTIFACT_ROOT = tmp_path / "mnt-b" / "artifacts"
    assert run_config(run).base_model == str((tmp_path / "mnt-b" / "artifacts").resolve() / base.path)
    claimed = services.run_claim(run_id=run.pk, worker="machine-b")
    assert runner.run_claimed(run_id=run.pk, claim_token=claimed.claim_token) == EXIT_OK
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.attempts == 1, run.error + run.log_tail
    assert run.config["base_model"] == stored
    assert artifact_dir(artifact=run.artifact).is_relative_to((tmp_path / "mnt-b").resolve())


# ----------------------------------------------------------------------------- containment at run time
def _claim_and_run(run: TrainingRun, config: dict) -> TrainingRun:
    """Run ``run`` with ``config`` as its stored config (a row written by hand, or by an older version)."""
    TrainingRun.objects.filter(pk=run.pk).update(config=config)
    claimed = services.run_claim(run_id=run.pk, worker="machine-b")
    code = runner.run_claimed(run_id=run.pk, claim_token=claimed.claim_token)
    run.refresh_from_db()
    run.exit_code = code
    return run


@pytest.fixture
def outside_model(tmp_path):
    """A model directory outside the artifact root and every model root."""
    path = tmp_path / "elsewhere" / "model"
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


@pytest.mark.django_db
@pytest.mark.parametrize("stored", ["../elsewhere/model", "base/../../elsewhere/model", "base/fixture/../../..",
                                    "/etc", "", "escape", "base/fixture/escape-inside"])
def test_a_stored_path_that_leads_out_of_the_root_fails_the_run_before_anything_is_loaded(
        ranked, stored_model, outside_model, artifact_root, sent, stored):
    (artifact_root / "escape").symlink_to(outside_model)  # a symlink under the root that points out of it
    (stored_model.parent / "escape-inside").symlink_to(artifact_root / "escape")
    project, researcher, _ = ranked
    run = services.run_create(project=project, kind="reward", config={"base_model": str(stored_model)})
    assert run.config["base_model"] == f"{ROOT_PREFIX}base/fixture/model"
    config = {**run.config, "base_model": ROOT_PREFIX + stored}
    with pytest.raises(InvalidInput) as error:  # the operator at the command line: refused up front
        services.run_create(project=project, kind="reward", config=config)
    assert error.value.location == "config.base_model"
    run = _claim_and_run(run, config)  # a row that names it anyway: the worker refuses it
    assert run.exit_code == EXIT_FAILED and run.status == Status.FAILED and run.attempts == 1
    assert run.error == "config.base_model: The model's path lies outside the artifact root.", run.error


@pytest.mark.django_db
def test_a_user_cannot_type_the_stored_form(ranked, stored_model, sent):
    project, researcher, _ = ranked
    for value in (f"{ROOT_PREFIX}base/fixture/model", f"{ROOT_PREFIX}../elsewhere/model"):
        with pytest.raises(InvalidInput, match="^config.base_model: Not an allowed model directory"):
            services.run_create(project=project, kind="reward", config={"base_model": value}, user=researcher)
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_a_users_model_directory_swapped_for_a_symlink_out_fails_the_run(
        ranked, outside_model, artifact_root, tmp_path, settings, sent):
    settings.RLHF_MODEL_ROOTS = [str(tmp_path / "models")]
    shared = tmp_path / "models" / "shared"
    shared.mkdir(parents=True)
    (shared / "config.json").write_text('{"model_type": "llama"}')
    project, researcher, _ = ranked
    run = services.run_create(project=project, kind="reward", config={"base_model": str(shared)}, user=researcher)
    assert run.config["base_model"] == str(shared.resolve())  # a model root's directory stays absolute
    shutil.rmtree(shared)
    shared.symlink_to(outside_model)  # after creation, before the worker loads it
    run = _claim_and_run(run, run.config)
    assert run.exit_code == EXIT_FAILED and run.status == Status.FAILED
    assert run.error.startswith("config.base_model: ") and "outside this machine's artifact root and model roots" \
        in run.error, run.error


@pytest.mark.django_db
def test_a_config_stored_with_absolute_paths_inside_the_root_still_resolves(ranked, stored_model, sent):
    """Rows written before issue #14 name their models by absolute path: where that path exists it loads as
    before, for the operator's runs and for a user's (whose path lies inside the root)."""
    project, researcher, _ = ranked
    base = ModelArtifact.objects.create(project=project, kind="base", name="b", path="base/fixture/model")
    for user in (None, researcher):
        run = services.run_create(project=project, kind="reward", config={}, base_artifact=base, user=user)
        assert run.config["base_model"] == f"{ROOT_PREFIX}base/fixture/model"
        TrainingRun.objects.filter(pk=run.pk).update(config={**run.config, "base_model": str(stored_model)})
        run.refresh_from_db()
        assert run_config(run).base_model == str(stored_model)


@pytest.mark.django_db
def test_an_adapters_base_model_is_stored_relative_to_the_root_and_a_run_from_it_too(
        ranked, stored_model, artifact_root, tmp_path, settings, sent):
    """A LoRA adapter's artifact records its base model (from the adapter_config.json its worker wrote, an
    absolute path on that worker) in the stored form; a DPO run from the adapter names both that way, and so
    does one from an adapter row written before issue #14 (absolute base model inside the root)."""
    from training.artifact_paths import artifact_base_model

    project, _, _ = ranked
    adapter_dir = artifact_root / "runs" / "7" / "policy"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{stored_model}"}}')
    adapter = services.artifact_register(project=project, kind="policy", name="lora", path=adapter_dir,
                                         is_adapter=True, base_model=str(stored_model))
    assert adapter.base_model == f"{ROOT_PREFIX}base/fixture/model"
    assert artifact_base_model(artifact=adapter) == str(stored_model.resolve())
    legacy = ModelArtifact.objects.create(project=project, kind="policy", name="old", path="runs/7/policy",
                                          is_adapter=True, base_model=str(stored_model))
    for artifact in (adapter, legacy):
        run = services.run_create(project=project, kind="dpo", config={}, base_artifact=artifact)
        assert (run.config["base_model"], run.config["adapter"]) == (f"{ROOT_PREFIX}base/fixture/model",
                                                                     f"{ROOT_PREFIX}runs/7/policy")

    (tmp_path / "artifacts").rename(tmp_path / "moved")  # the same storage, another mount point
    settings.ARTIFACT_ROOT = tmp_path / "moved"
    assert artifact_base_model(artifact=adapter) == str((tmp_path / "moved" / "base" / "fixture" / "model").resolve())
    resolved = run_config(run)
    assert (resolved.base_model, resolved.adapter) == (str((tmp_path / "moved").resolve() / "base/fixture/model"),
                                                       str((tmp_path / "moved").resolve() / "runs/7/policy"))
