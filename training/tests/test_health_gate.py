"""The health gate on the database: an unhealthy policy cannot start a round (service, API, CLI) unless a
researcher overrides it with a reason (recorded); a junk policy made by a real policy run is stopped and
``run_loop`` fails; thresholds are per project; the monitor flags a utility fall."""
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.errors import InvalidInput
from annotation.models import Round
from training.health import health_settings_get, health_settings_update, task_checks_resolve
from training.models import HealthSettings, ModelArtifact, RoundReport, TrainingRun
from training.rounds import round_report_record, round_start

pytestmark = pytest.mark.django_db
REASONS = ["NLL under round 0 rose +3.10 nats/token > +1.00"]


@pytest.fixture
def unhealthy(ranked, stored_model, artifact_root):
    project, researcher, labeler = ranked
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="junk", path=str(stored_model),
                                          healthy=False, health={"healthy": False, "reasons": REASONS})
    return project, researcher, labeler, policy


def test_an_unhealthy_policy_cannot_start_a_round_until_a_researcher_overrides_it(unhealthy, client, sent, tmp_path):
    project, researcher, labeler, policy = unhealthy
    rounds = Round.objects.count()
    with pytest.raises(InvalidInput, match="failed the health gate") as error:
        round_start(project=project, policy_artifact=policy, prompts=["Hi"], user=researcher)
    assert error.value.location == "policy" and "NLL under round 0 rose" in error.value.message
    url, body = f"/api/projects/{project.slug}/rounds/", {"policy": policy.pk, "prompts": ["Hi"]}
    client.force_login(researcher)
    refused = client.post(url, body, content_type="application/json")
    assert refused.status_code == 400 and "health gate" in refused.json()["error"] and refused.json()["location"] == "policy"
    assert Round.objects.count() == rounds and not TrainingRun.objects.exists()
    with pytest.raises(CommandError, match="failed the health gate"):
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Hi"}) + "\n")
        call_command("start_round", "--project", project.slug, "--policy", str(policy.pk), "--prompts",
                     str(tmp_path / "p.jsonl"))
    with pytest.raises(CommandError, match="--user"):
        call_command("start_round", "--project", project.slug, "--policy", str(policy.pk), "--prompts",
                     str(tmp_path / "p.jsonl"), "--override-health", "why not")
    client.force_login(labeler)  # a labeler may not override
    assert client.post(url, {**body, "health_override": "looks fine"}, content_type="application/json").status_code == 403
    client.force_login(researcher)
    response = client.post(url, {**body, "health_override": "checked 20 replies by eye: fine"},
                           content_type="application/json")
    assert response.status_code == 201, response.json()
    policy.refresh_from_db()
    assert policy.health_override_by == researcher and policy.health_override_reason == "checked 20 replies by eye: fine"
    assert policy.may_generate and policy.healthy is False  # the verdict stays; the override is recorded beside it
    artifact = client.get(f"/api/artifacts/{policy.pk}/").json()
    assert artifact["healthy"] is False and artifact["health"]["reasons"] == REASONS
    assert artifact["health_override_by"] == researcher.pk


def test_health_settings_are_per_project_and_validated(ranked):
    project = ranked[0]
    assert health_settings_get(project=project)[0].max_nll_rise == 1.0  # the default
    health_settings_update(project=project, thresholds={"max_nll_rise": 0.7}, task_checks=["demo_grammar"])
    thresholds, checks = health_settings_get(project=project)
    assert thresholds.max_nll_rise == 0.7 and thresholds.min_eos_rate == 0.95 and checks == ["demo_grammar"]
    assert task_checks_resolve(checks)["demo_grammar"]([], "the warm river glowed.") is True
    with pytest.raises(InvalidInput, match="unknown health setting"):
        health_settings_update(project=project, thresholds={"max_nll": 0.7})
    with pytest.raises(InvalidInput, match="'nope' is not a registered task_check hook"):
        health_settings_update(project=project, thresholds={}, task_checks=["nope"])


def test_the_monitor_flags_a_utility_fall_whatever_the_reward_model_says_and_an_unhealthy_generator(unhealthy):
    project, _, _, policy = unhealthy
    first = Round.objects.get(project=project)
    round_report_record(round=first, metrics={"utility_mean": 0.5, "utility_se": 0.03})
    second = Round.objects.create(project=project, number=2, status=Round.Status.CLOSED)
    report = round_report_record(round=second, metrics={"utility_mean": 0.3, "utility_se": 0.03}, policy=policy)
    assert report.overoptimised and "labelers' utility fell by 0.200" in report.flag_reason
    assert "failed the health gate (NLL under round 0 rose" in report.flag_reason
    third = Round.objects.create(project=project, number=3, status=Round.Status.CLOSED)
    calm = round_report_record(round=third, metrics={"utility_mean": 0.28, "utility_se": 0.03})
    assert not calm.overoptimised and calm.flag_reason == ""  # a fall within the noise is not flagged


@pytest.mark.slow
def test_a_junk_policy_from_a_real_dpo_run_is_stopped_and_run_loop_fails(make_user, make_project, artifact_root, capsys):
    """DPO at a destructive learning rate turns round 0's policy into junk; the gate marks it (and the safer
    retry) unhealthy, neither generates a round, the loop keeps round 0's policy and exits non-zero."""
    from training.ml.demo_task import load_demonstrations
    from training.policy_data import policy_data_import

    researcher = make_user("rita")
    project = make_project(slug="junk", k=4, prompts=0, researchers=[researcher])
    nouns = ("river", "road", "hill", "boat", "tower", "field", "garden", "bridge")
    lines = [json.dumps({"messages": m, "response": r}) for m, r in load_demonstrations()[:1000]]
    lines += [json.dumps({"prompt": f"Continue the story about the {n}."}) for n in nouns]
    policy_data_import(project=project, lines=lines)
    health_settings_update(project=project, thresholds={"prompts": 16})
    with pytest.raises(CommandError, match="loop failed: .*utility did not rise"):
        call_command("run_loop", "--project", "junk", "--rounds", "1", "--in-process", "--prompts-per-round", "8",
                     "--loop-config", json.dumps({"sft_steps": 100, "reward_steps": 3, "dpo_epochs": 1.0}),
                     "--policy-config", json.dumps({"learning_rate": 0.05}))
    out = capsys.readouterr()
    sft = ModelArtifact.objects.get(project=project, run__kind="sft")
    junk = list(ModelArtifact.objects.filter(project=project, run__kind="dpo").order_by("id"))
    assert sft.healthy is True and len(junk) == 2  # the DPO run and its safer retry (lr ÷2, β ×2)
    assert junk[1].run.config["learning_rate"] == 0.025 and junk[1].run.config["beta"] == 2 * junk[0].run.config["beta"]
    for artifact in junk:
        assert artifact.healthy is False and artifact.health["nll_rise"] > 1.0, artifact.health
        with pytest.raises(InvalidInput, match="failed the health gate"):
            round_start(project=project, policy_artifact=artifact, prompts=["Hi"])
    generators = set(RoundReport.objects.filter(round__project=project).values_list("policy_id", flat=True))
    assert generators == {sft.pk}  # round 1 was generated by round 0's policy, kept
    assert "retrying once" in out.err + out.out and "GATE:" in out.err + out.out
    trained_on = RoundReport.objects.get(round__project=project, metrics__has_key="gate_failed")  # loop round 0
    assert trained_on.metrics["gate_failed"] and "failed the health gate" in trained_on.flag_reason


def test_health_gate_command_sets_thresholds_and_shows_a_policys_verdict(unhealthy, capsys):
    project, _, _, policy = unhealthy
    policy.health = {**policy.health, "eos_rate": 1.0, "distinct_rate": 1.0, "nll_rise": 3.1, "kl_to_round0": 9.0}
    policy.save()
    call_command("health_gate", "--project", project.slug, "--thresholds", '{"max_nll_rise": 0.8}',
                 "--task-checks", "demo_grammar", "--policy", str(policy.pk))
    out = capsys.readouterr().out
    assert '"max_nll_rise": 0.8' in out and "task checks: demo_grammar" in out
    assert "health UNHEALTHY: NLL under round 0 rose +3.10" in out
    with pytest.raises(CommandError, match="unknown health setting"):
        call_command("health_gate", "--project", project.slug, "--thresholds", '{"max_nl": 1}')


def test_the_browser_shows_the_verdict_and_the_start_round_form_takes_an_override(unhealthy, client, sent):
    project, researcher, _, policy = unhealthy
    client.force_login(researcher)
    url = f"/training/projects/{project.slug}/lineage/start-round/"
    form = {"policy": policy.pk, "prompts_text": "Hello?", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16,
            "seed": 0}
    refused = client.post(url, form)
    assert refused.status_code == 400 and "failed the health gate" in refused.content.decode()
    assert client.post(url, {**form, "health_override": "reviewed by hand"}).status_code == 302
    policy.refresh_from_db()
    assert policy.health_override_by == researcher and policy.health_override_reason == "reviewed by hand"
    page = client.get(f"/training/projects/{project.slug}/lineage/").content.decode()
    assert "unhealthy: NLL under round 0 rose +3.10" in page and "overridden by rita: reviewed by hand" in page
    artifact_page = client.get(f"/training/artifacts/{policy.pk}/").content.decode()
    assert "Health gate" in artifact_page and "failed" in artifact_page


def test_run_loop_points_gate_settings_to_the_projects_health_gate(ranked):
    from training.loop import LoopSettings, _loop_config

    with pytest.raises(InvalidInput, match="health_gate --project"):
        _loop_config(LoopSettings(overrides={"health_max_nll_rise": 2.0}))
    assert _loop_config(LoopSettings(overrides={"dpo_reference": "round0"})).dpo_reference == "round0"  # issue 12
    with pytest.raises(InvalidInput, match="dpo_reference must be one of"):
        _loop_config(LoopSettings(overrides={"dpo_reference": "latest"}))
    assert _loop_config(LoopSettings(overrides={"dpo_rpo_alpha": 0.5})).dpo_rpo_alpha == 0.5


def test_run_loop_passes_dpo_early_stopping_to_its_dpo_runs(ranked):
    from training.loop import LoopSettings, _loop_config, policy_run_config
    from training.ml.config import DPOConfig

    with pytest.raises(InvalidInput, match="set dpo_eval_fraction > 0"):
        _loop_config(LoopSettings(overrides={"dpo_early_stopping_patience": 2}))
    loop = _loop_config(LoopSettings(overrides={"dpo_early_stopping_patience": 2, "dpo_eval_fraction": 0.2}))
    config = policy_run_config("dpo", loop)
    assert (config["early_stopping_patience"], config["eval_fraction"], config["eval_every"]) == (2, 0.2,
                                                                                                 loop.dpo_eval_every)
    DPOConfig.from_dict({"base_model": "m", **config})
    plain = policy_run_config("dpo", _loop_config(LoopSettings()))  # off by default, nothing held out
    assert (plain["early_stopping_patience"], plain["eval_fraction"], plain["eval_every"]) == (0, 0.0, 10_000)


# ----------------------------------------------------------------------------- task checks relative to round 0
BAD_Z = ["3", "abc", float("nan"), float("inf"), -1, -0.001, 10.001, 1e9, True, None, [3], {"z": 3}]


def test_task_check_z_is_a_project_setting_and_a_bad_one_is_refused_with_nothing_written(ranked, make_project):
    project = ranked[0]
    assert health_settings_get(project=project)[0].task_check_z == 3.0  # the default
    health_settings_update(project=project, thresholds={"task_check_z": 2.0, "min_task_pass_rate": 0.8},
                           task_checks=["demo_grammar"])
    row = HealthSettings.objects.get(project=project)
    stored = (row.thresholds, row.task_checks, row.updated_at)
    assert health_settings_get(project=project)[0].task_check_z == 2.0
    fresh = make_project(slug="fresh", prompts=0)
    for bad in BAD_Z:
        for target in (project, fresh):
            with pytest.raises(InvalidInput, match="task_check_z must be a number of standard errors between 0 and 10") \
                    as error:
                health_settings_update(project=target, thresholds={"task_check_z": bad}, task_checks=[])
            assert error.value.location == "thresholds"
    row.refresh_from_db()
    assert (row.thresholds, row.task_checks, row.updated_at) == stored  # nothing written
    assert not HealthSettings.objects.filter(project=fresh).exists()
    for text in ('{"task_check_z": NaN}', '{"task_check_z": "3"}', '{"task_check_z": -2}', '{"task_check_z": 1e400}'):
        with pytest.raises(CommandError, match="task_check_z must be a number"):
            call_command("health_gate", "--project", project.slug, "--thresholds", text)
    row.refresh_from_db()
    assert (row.thresholds, row.task_checks, row.updated_at) == stored


def test_the_admin_form_validates_thresholds_as_the_service_does(ranked):
    from training.admin import HealthSettingsForm

    project = ranked[0]
    form = HealthSettingsForm(data={"project": project.pk, "thresholds": '{"task_check_z": NaN}', "task_checks": "[]"})
    assert not form.is_valid() and "task_check_z must be a number" in form.errors["thresholds"][0]
    form = HealthSettingsForm(data={"project": project.pk, "thresholds": "{}", "task_checks": '["nope"]'})
    assert not form.is_valid() and "not a registered task_check hook" in form.errors["task_checks"][0]
    form = HealthSettingsForm(data={"project": project.pk, "thresholds": '{"task_check_z": 2.5}',
                                    "task_checks": '["demo_grammar"]'})
    assert form.is_valid(), form.errors
    assert not HealthSettings.objects.filter(project=project).exists()  # is_valid writes nothing


@pytest.fixture
def untrained_round0(ranked, artifact_root):
    """(project, round 0 as a registered policy, a copy of its weights as a new policy's directory): the demo's
    untrained tiny LM, whose replies hardly ever parse; the demo's prompts as the held-out pool."""
    import shutil

    from training.ml import demo_task
    from training.policy_data import policy_data_import

    project = ranked[0]
    policy_data_import(project=project, lines=[json.dumps({"messages": demo_task.demo_prompt(n)})
                                               for n in demo_task.NOUNS])
    base = demo_task.build_demo_base(artifact_root / "r0", seed=0, hidden=32)
    round0 = ModelArtifact.objects.create(project=project, kind="policy", name="round0", path=str(base))
    policy_dir = artifact_root / "policy"
    shutil.copytree(base, policy_dir)
    health_settings_update(project=project, thresholds={"prompts": 8}, task_checks=["demo_grammar"])
    return project, round0, policy_dir


def test_the_django_gate_compares_each_task_check_with_round_0s_own_rate(untrained_round0):
    """The policy parses as often as round 0 (the same weights): below the 90% floor, yet it passes, with round
    0's rate in its figures and log line; with no round 0 in its lineage the floor alone applies."""
    from training.health import policy_health_check

    project, round0, policy_dir = untrained_round0
    lines = []
    run = TrainingRun.objects.create(project=project, kind="dpo", base_artifact=round0)
    health = policy_health_check(run=run, policy_dir=policy_dir, log=lines.append)
    rate = health["task_checks"]["demo_grammar"]
    assert rate < 0.9 and health["task_checks_round0"] == {"demo_grammar": rate} and health["replies_round0"] == 32
    assert health["healthy"], health["reasons"]
    assert f"task checks demo_grammar {100 * rate:.1f}% (round 0 {100 * rate:.1f}%)" in lines[0]
    orphan = TrainingRun.objects.create(project=project, kind="sft")  # no policy in its lineage: its own round 0
    alone = policy_health_check(run=orphan, policy_dir=policy_dir, log=lines.append)
    assert alone["task_checks_round0"] == {} and not alone["healthy"]
    assert alone["reasons"] == [f"task check demo_grammar: {100 * rate:.1f}% of replies pass < 90%"]


def test_the_pages_show_each_task_checks_rate_beside_round_0s(unhealthy, client):
    _, researcher, _, policy = unhealthy
    policy.healthy, policy.health = True, {"healthy": True, "reasons": [], "eos_rate": 1.0, "distinct_rate": 1.0,
                                           "nll_rise": 0.1, "task_checks": {"demo_grammar": 0.88},
                                           "task_checks_round0": {"demo_grammar": 0.93}}
    policy.save()
    client.force_login(researcher)
    page = client.get(f"/training/artifacts/{policy.pk}/").content.decode()
    assert "task checks demo_grammar 88.0% (round 0 93.0%)" in page
    policy.healthy = False
    policy.health = {**policy.health, "healthy": False, "task_checks_round0": {},
                     "reasons": ["task check demo_grammar: 88.0% of replies pass < 90%"]}
    policy.save()
    page = client.get(f"/training/artifacts/{policy.pk}/").content.decode()
    assert "unhealthy: task check demo_grammar: 88.0% of replies pass &lt; 90% (task checks demo_grammar 88.0% " \
           "(round 0 —))" in page
