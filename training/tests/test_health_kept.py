"""The in-run health checks through a real DPO job: when the final policy fails the gate, the job registers the
last healthy in-run policy (its parameters are the run's checkpoint of that step), the run's summary, page and
API say which step was kept and why; with ``health_every`` 0 the final policy is registered as before."""
import hashlib
import io
import json
import random

import pytest
import torch
from django.core.management import call_command
from safetensors.torch import load_file

from annotation.models import Prompt, Round, Sample
from annotation.services import ranking_record
from training import services
from training.ml import demo_task
from training.ml.config import SFTConfig
from training.ml.trainers.sft import train_sft
from training.ml.types import NullHooks
from training.models import ModelArtifact
from training.policy_data import policy_data_import
from training.artifact_paths import artifact_dir
from training.tests.test_jobs import _execute

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # each test trains for ~8 s
# DPO at learning rate 0.01, warmed up over 6 of 12 steps: the first steps stay near round 0, the last are junk
DESTRUCTIVE = {"num_threads": 1, "eval_every": 10_000, "checkpoint_every": 3, "keep_checkpoints": 10, "max_steps": 12,
               "batch_size": 8, "beta": 0.1, "learning_rate": 0.01, "lr_scheduler": "linear", "warmup_ratio": 0.5}


@pytest.fixture
def ranked_round0(make_user, make_project, artifact_root):
    """(project, round 0's policy): the demo's tiny base after 60 SFT steps; 48 prompts of round 1 whose
    bright responses a labeler ranked over the dark ones; the demo's 16 prompts as the held-out pool."""
    labeler, researcher = make_user("lars"), make_user("rita")
    project = make_project(slug="kept", k=4, prompts=0, labelers=[labeler], researchers=[researcher])
    policy_data_import(project=project, lines=[json.dumps({"messages": demo_task.demo_prompt(n)})
                                               for n in demo_task.NOUNS])
    # Llama's std 0.02, the tiny models' init before issue 12: lr 0.01 then takes ~6 steps to ruin the policy, so
    # the in-run checks see healthy and junk steps (from a base at hidden^-0.5 step 3 is junk already)
    base = demo_task.build_demo_base(artifact_root / "r0" / "base", seed=0, hidden=32, initializer_range=0.02)
    config = SFTConfig(base_model=str(base), seed=0, max_steps=60, learning_rate=3e-3, batch_size=32, num_threads=1,
                       eval_every=10_000, checkpoint_every=10_000, eval_fraction=0.0, lr_scheduler="constant")
    policy_dir = train_sft(config, demo_task.load_demonstrations()[:1000], output_dir=artifact_root / "r0" / "sft",
                           hooks=NullHooks(), resume=False)["policy_dir"]
    round0 = services.artifact_register(project=project, kind=ModelArtifact.Kind.POLICY, name="round0", path=policy_dir)
    rnd, rng = Round.objects.get(project=project, number=1), random.Random(1)
    for _ in range(48):
        noun = rng.choice(demo_task.NOUNS)
        prompt = Prompt.objects.create(project=project, round=rnd, messages=demo_task.demo_prompt(noun))
        words = rng.sample(demo_task.BRIGHT, 2) + rng.sample(demo_task.DARK, 2)  # 4 distinct texts
        samples = [Sample.objects.create(prompt=prompt, text=t, text_sha256=hashlib.sha256(t.encode()).hexdigest(),
                                         position=j, model_name="round0")
                   for j, t in enumerate(f"the {w} {noun} {rng.choice(demo_task.VERBS)}." for w in words)]
        ranking_record(prompt=prompt, labeler=labeler, tiers=[[samples[0].pk, samples[1].pk],
                                                              [samples[2].pk, samples[3].pk]], source="human")
    return project, researcher, round0


def _dpo(project, round0, **config):
    return _execute(services.run_create(project=project, kind="dpo", base_artifact=round0, rounds=[1],
                                        config={**DESTRUCTIVE, **config}))


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(next(iter(sorted(path.glob("*.safetensors")))))


def test_a_run_whose_final_policy_fails_registers_its_last_healthy_checkpoint(ranked_round0, client):
    project, researcher, round0 = ranked_round0
    run = _dpo(project, round0, health_every=3, health_prompts=8)
    kept, watch = run.summary["health_kept"], run.summary["health_watch"]
    step = kept["step"]
    assert watch["checked_steps"] == [3, 6, 9] and step == watch["kept_step"] and 3 <= step < 12
    assert kept["final_health"]["healthy"] is False and kept["final_reasons"] == kept["final_health"]["reasons"]
    assert any("NLL under round 0 rose" in r for r in kept["final_reasons"])
    assert kept["note"] == f"kept step {step}: final policy failed ({'; '.join(kept['final_reasons'])})"

    artifact = run.artifact
    assert artifact.healthy is True and artifact.health == run.summary["health"]  # the kept policy's own verdict
    assert artifact.health["prompts"] == 32 and artifact.may_generate  # checked by the full gate (32 prompts), not 8
    path = artifact_dir(artifact=artifact)
    assert path.name == "healthy_policy"
    checkpoint = run.summary["policy_dir"].replace("/policy", f"/checkpoints/step-{step:08d}/model")
    saved, at_step = _weights(path), _weights(type(path)(checkpoint))
    assert all(torch.equal(saved[k], at_step[k]) for k in saved)  # the parameters of step `step`

    points = {p.step: p.values for p in run.metrics.filter(split="train")}
    assert points[step]["healthy"] == 1.0 and "health_nll_rise" in points[3] and "healthy" not in points[12]
    assert f"kept step {step}: final policy failed" in run.log_tail

    client.force_login(researcher)
    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert f"Kept step {step}: final policy failed (NLL under round 0 rose" in page and "health_nll_rise" in page
    api = client.get(f"/api/runs/{run.pk}/").json()
    assert api["summary"]["health_kept"]["step"] == step and api["summary"]["health_kept"]["note"] == kept["note"]
    cli = io.StringIO()
    call_command("health_gate", "--project", project.slug, "--policy", str(artifact.pk), stdout=cli)
    out = cli.getvalue()
    assert f"policy #{artifact.pk} {artifact.name}: health HEALTHY" in out and f"\n  {kept['note']}\n" in out  # the CLI


def test_with_health_every_0_the_final_policy_is_registered_unhealthy(ranked_round0, client):
    project, researcher, round0 = ranked_round0
    run = _dpo(project, round0, health_every=0)
    assert "health_kept" not in run.summary and "health_watch" not in run.summary
    assert run.artifact.healthy is False and artifact_dir(artifact=run.artifact).name == "policy"
    assert not any(k.startswith("health") or k == "healthy" for p in run.metrics.all() for k in p.values)
    client.force_login(researcher)
    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert "Health gate failed" in page and "health-kept" not in page and "health_nll_rise" not in page
