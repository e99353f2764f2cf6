"""The headless collect-train loop on the database: generate -> simulated labelling -> reward model ->
policy run (DPO, PPO or GRPO) -> next round, each step through the same services and jobs as the browser.

Every run is created with ``run_create``/``round_start`` and executed by ``run_execute``: it claims the run
and supervises ``python -m training.runner RUN_ID`` exactly as the Celery task does (or, with
``in_process=True``, runs the child side in this process; tests use that). If a worker claimed the run
first, it waits for the worker. Rows, metrics, checkpoints and artifacts are the same either way.

The loop itself is ``training.ml.loop.loop_rounds`` (the same algorithm as the in-memory loop: round sequence,
gate -> retry once with ``safer_config`` -> keep the previous policy, flags, round line) on ``DatabaseSteps``.
Per round the figures of ``training.ml.loop.round_metrics`` (mean utility ± standard error, KL to round 0,
health) plus the reward model's held-out accuracy and its mean score on this round's and the previous
round's samples, the policy run's id and the generating policy's health (and override) are stored on the
round's ``RoundReport``; ``training.rounds.flags_update`` flags it (``training.ml.monitor``).
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Project, Round
from annotation.services import ranking_record
from annotation.simulation import sim_labelers_ensure
from preferences.simulated import simulated_tiers
from training import runner, services, supervisor
from training.models import ModelArtifact, TrainingRun
from training.policy_data import pool_prompts_sample
from training.rounds import round_report_record, round_start
from training.artifact_paths import artifact_dir, base_models_dir
from training.ml.config import OPTIMIZERS
from training.selectors import policy_load



@dataclass
class LoopSettings:
    """What ``run_loop`` takes; the training defaults come from ``training.ml.loop.LoopConfig`` (the demo's)."""

    rounds: int = 3
    optimizer: str = "dpo"
    utility: str = "training.ml.demo_task:demo_utility"
    seed: int = 0
    prompts_per_round: int | None = None  # None: LoopConfig's
    labelers: int = 1
    in_process: bool = False
    overrides: dict = field(default_factory=dict)  # LoopConfig fields to change (tests use tiny sizes)
    policy_config: dict = field(default_factory=dict)  # extra settings of the policy runs (PPO/GRPO)


class LoopFailed(Exception):
    pass


# ----------------------------------------------------------------------------- running runs
def run_execute(*, run: TrainingRun, in_process: bool = False, poll: float = 1.0) -> TrainingRun:
    """Run a queued run now, the way the Celery task does; wait for a worker that claimed it first."""
    worker = f"cli:{os.uname().nodename}:{os.getpid()}"
    while True:  # a crashed attempt re-queues the run (until max_attempts): claim it again, or let a worker
        claimed = services.run_claim(run_id=run.pk, worker=worker)
        if claimed is not None:
            if in_process:
                runner.run_claimed(run_id=run.pk, claim_token=claimed.claim_token)
            else:
                supervisor.supervise(run_id=run.pk, claim_token=claimed.claim_token, attempt=claimed.attempts)
        run.refresh_from_db()
        if run.is_terminal:
            break
        if claimed is None:
            time.sleep(poll)  # a worker holds it
    if run.status != TrainingRun.Status.SUCCEEDED:
        raise LoopFailed(f"{run.kind} run {run.pk} {run.status}: {run.error or 'no error recorded'}")
    return run


# ----------------------------------------------------------------------------- labelling and measuring
def round_label_simulated(*, rnd: Round, utility, labelers: int, noise: float, tie_threshold: float,
                          seed: int) -> dict:
    """Simulated labelers rank every prompt of this round (utility + N(0, noise²); near-ties tie) through
    ``ranking_record``; then the round is closed. Returns rankings, pairs and agreement with the clean utility."""
    users = sim_labelers_ensure(project=rnd.project, num_labelers=labelers)
    rng = random.Random(seed * 7919 + rnd.number)
    rankings = pairs = agreeing = 0
    for prompt in rnd.prompts.prefetch_related("samples").order_by("id"):
        clean = {s.pk: float(utility(prompt.messages, s.text)) for s in prompt.samples.all()}
        for user in users:
            tiers = simulated_tiers(clean, noise=noise, tie_threshold=tie_threshold, rng=rng)
            ranking = ranking_record(prompt=prompt, labeler=user, tiers=tiers, source="simulated")
            for chosen, rejected in ranking.pairs.values_list("chosen_id", "rejected_id"):
                pairs += 1
                agreeing += clean[chosen] > clean[rejected]
            rankings += 1
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.CLOSED)
    return {"rankings": rankings, "pairs": pairs, "agreement": agreeing / pairs if pairs else None}


def _round_samples(rnd: Round):
    from training.ml.generation import GeneratedSample

    prompts, samples = [], []
    for prompt in rnd.prompts.prefetch_related("samples").order_by("id"):
        group = sorted(prompt.samples.all(), key=lambda s: s.position)
        prompts.append(prompt.messages)  # ended_with_eos is not stored: the report keeps generation's eos_rate
        samples.append([GeneratedSample(s.text, s.num_tokens or 0, True, s.logprob) for s in group])
    return prompts, samples


def rm_mean_score(rm_dir, rnd: Round) -> float:
    """Mean score of a reward model over every sample of a round (re-tokenised with its own tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.ml.rollout import reward_model_scores

    prompts, samples = _round_samples(rnd)
    rollout = SimpleNamespace(prompt_index=[i for i, g in enumerate(samples) for _ in g],
                              texts=[s.text for g in samples for s in g])
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    return float(reward_model_scores(model, AutoTokenizer.from_pretrained(rm_dir), prompts, rollout).mean())


def round_measure(*, rnd: Round, utility, round0, rm_artifact: ModelArtifact | None, previous: Round | None,
                  policy=None) -> dict:
    """Utility, KL to round 0 and health of the round's samples; the RM's mean score on it and the previous round.
    ``policy``: the (model, tokenizer) that generated the round (None: round 0's own policy)."""
    from training.ml.loop import round_metrics

    prompts, samples = _round_samples(rnd)
    metrics = round_metrics(prompts, samples, utility=utility, round0=round0, policy=policy or round0)
    metrics.pop("eos_rate")
    if rm_artifact is not None and previous is not None:
        rm_dir = artifact_dir(artifact=rm_artifact)
        metrics["rm_score_mean"] = rm_mean_score(rm_dir, rnd)
        metrics["rm_score_prev_round"] = rm_mean_score(rm_dir, previous)
    return metrics


# ----------------------------------------------------------------------------- round 0's policy
def policy_bootstrap(*, project: Project, loop, in_process: bool = False, log=print) -> ModelArtifact:
    """The project's newest policy; else a tiny base built on its texts, fine-tuned on its demonstrations (SFT)."""
    policy = project.artifacts.filter(kind=ModelArtifact.Kind.POLICY).order_by("-id").first()
    if policy is not None:
        return policy
    if not project.demonstrations.exists():
        raise InvalidInput(f"Project {project.slug} has no policy and no demonstrations to train one: import "
                           "demonstrations (python manage.py import_policy_data) or give --policy.", location="policy")
    base = policy_base_build(project=project, seed=loop.seed)
    config = {"seed": loop.seed, "max_steps": loop.sft_steps, "learning_rate": loop.sft_learning_rate,
              "batch_size": 32, "warmup_ratio": 0.05, "lr_scheduler": "cosine", "eval_every": 10_000,
              "checkpoint_every": 10_000, "num_threads": loop.num_threads, "eval_fraction": 0.0}
    run = services.run_create(project=project, kind=TrainingRun.Kind.SFT, config=config, base_artifact=base)
    log(f"round 0's policy: SFT run {run.pk} on {project.demonstrations.count()} demonstrations")
    return run_execute(run=run, in_process=in_process).artifact


def policy_base_build(*, project: Project, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                      vocab_size: int = 512) -> ModelArtifact:
    """A tokenizer trained on the project's pool prompts and demonstrations, and a tiny causal LM (BASE)."""
    from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer

    texts = [m["content"] for msgs in project.pool_prompts.values_list("messages", flat=True) for m in msgs]
    for messages, response in project.demonstrations.values_list("messages", "response"):
        texts += [m["content"] for m in messages] + [response]
    root = base_models_dir(project_slug=project.slug)
    tokenizer = build_tokenizer(texts, root / "policy-tokenizer", vocab_size=vocab_size)
    path = build_tiny_causal_lm(root / "tiny-policy-base", tokenizer, hidden=hidden, layers=layers, heads=heads,
                                max_positions=128, seed=seed)
    metrics = {"hidden": hidden, "layers": layers, "heads": heads, "vocab_size": len(tokenizer), "seed": seed}
    with transaction.atomic():
        existing = project.artifacts.filter(kind=ModelArtifact.Kind.BASE, name="tiny-policy-base").first()
        if existing is None:
            return services.artifact_register(project=project, kind=ModelArtifact.Kind.BASE, name="tiny-policy-base",
                                              path=path, metrics=metrics)
        existing.metrics = metrics  # rebuilt in place: runs that used it keep pointing at the same row
        existing.save(update_fields=["metrics"])
        return existing


# ----------------------------------------------------------------------------- the loop
def _loop_config(settings: LoopSettings):
    from training.ml.loop import LoopConfig

    unknown = sorted(set(settings.overrides) - set(LoopConfig.__dataclass_fields__))
    if unknown:
        raise InvalidInput(f"unknown loop setting {unknown[0]!r}", location="overrides")
    if "optimizer" in settings.overrides:
        raise InvalidInput("choose the optimizer with --optimizer, not in the loop settings", location="overrides")
    health = sorted(k for k in settings.overrides if k.startswith("health_"))
    if health:  # on the database the gate is the project's (HealthSettings), applied by every policy job
        raise InvalidInput(f"{health[0]!r}: set the project's health gate with python manage.py health_gate "
                           "--project SLUG --thresholds JSON", location="overrides")
    try:
        loop = LoopConfig(seed=settings.seed, rounds=settings.rounds, labelers=settings.labelers,
                          optimizer=settings.optimizer, **settings.overrides)  # optimizer: reward_model_steps
    except ValueError as error:  # a bad value (dpo_reference "latest") or a cross-setting rule (early stopping
        # without held-out prompts)
        raise InvalidInput(str(error), location="overrides") from error
    if settings.prompts_per_round:
        loop.prompts_per_round = settings.prompts_per_round
    return loop


def policy_run_config(optimizer: str, loop) -> dict:
    """A policy run's config from ``LoopConfig`` (one source of truth with ``training.ml.loop``); the policy and
    reward model paths are filled from the chosen artifacts by ``run_create``."""
    if optimizer == "dpo":
        from training.ml.loop import dpo_settings

        return {"seed": loop.seed, "num_threads": loop.num_threads, "eval_every": 10_000, "checkpoint_every": 10_000,
                **dpo_settings(loop)}
    return rl_run_config(optimizer, loop)


def rl_run_config(optimizer: str, loop) -> dict:
    """A PPO/GRPO run's config from ``LoopConfig`` (``ppo_config``/``grpo_config``)."""
    from training.ml.loop import grpo_config, ppo_config

    config = (ppo_config if optimizer == "ppo" else grpo_config)("", loop).to_dict()
    for key in ("base_model", "reward_model"):
        config.pop(key)
    return config


def explicit_settings(explicit: dict, *, attempt: dict, loop: dict) -> dict:
    """The operator's explicit policy-run settings (``--policy-config``) on one attempt of a round's policy run.
    The gate's retry runs with ``safer_config``'s loop settings: an explicit setting that rule changed is
    changed by the same factor as the loop's own value (a non-numeric one takes the attempt's value).

    >>> explicit_settings({"learning_rate": 0.05, "epochs": 3}, attempt={"learning_rate": 1e-4, "epochs": 2},
    ...                   loop={"learning_rate": 2e-4, "epochs": 2})
    {'learning_rate': 0.025, 'epochs': 3}
    """
    def on_attempt(key, value):
        if key not in attempt or attempt[key] == loop.get(key):
            return value
        numeric = all(isinstance(v, (int, float)) for v in (value, attempt[key], loop.get(key)))
        return value * (attempt[key] / loop[key]) if numeric and loop[key] else attempt[key]

    return {key: on_attempt(key, value) for key, value in explicit.items()}


class DatabaseSteps:
    """The loop's steps on database rows (``training.ml.loop.LoopSteps``): every run is created through the
    services (``round_start``, ``run_create``) and executed by ``run_execute``; the gate's verdict is read from
    each new policy's artifact (every policy job checks it); each round's figures go on its ``RoundReport``,
    whose flags ``training.rounds.flags_update`` sets."""

    def __init__(self, *, project: Project, settings: LoopSettings, loop, utility, policy: ModelArtifact | None,
                 log=print, step=lambda label: None):
        self.project, self.settings, self.loop, self.utility, self.log, self.step = (project, settings, loop, utility,
                                                                                     log, step)
        self.start_policy, self.labelled, self.rm, self.previous = policy, [], None, None

    def bootstrap(self):
        policy = self.start_policy or policy_bootstrap(project=self.project, loop=self.loop,
                                                       in_process=self.settings.in_process, log=self.log)
        self.round0_policy, self.round0 = policy, policy_load(policy)
        return _trained(policy, name=f"policy {policy.name} (#{policy.pk})")

    def generate(self, r: int, policy) -> Round:
        loop = self.loop
        prompts = pool_prompts_sample(project=self.project, n=loop.prompts_per_round, seed=loop.seed * 1000 + r)
        sampling = {"temperature": loop.temperature, "top_p": loop.top_p, "max_new_tokens": loop.max_new_tokens,
                    "seed": loop.seed * 1000 + r, "num_threads": loop.num_threads}
        gen = run_execute(run=round_start(project=self.project, policy_artifact=policy.policy, prompts=prompts,
                                          sampling=sampling), in_process=self.settings.in_process)
        self.step(f"round {r}: generated")
        return gen.round

    def measure(self, r: int, rnd: Round, policy) -> dict:
        self.generator = ModelArtifact.objects.get(pk=policy.policy.pk)  # as stored now: an override is on the row
        loaded = None if self.generator.pk == self.round0_policy.pk else policy_load(self.generator)
        return {"round_number": rnd.number,
                **round_measure(rnd=rnd, utility=self.utility, round0=self.round0, rm_artifact=self.rm,
                                previous=self.previous, policy=loaded),
                "policy_health": {"healthy": self.generator.healthy,
                                  "reasons": (self.generator.health or {}).get("reasons", []),
                                  "overridden": self.generator.health_override_at is not None}}

    def label(self, r: int, rnd: Round) -> dict:
        loop = self.loop
        figures = round_label_simulated(rnd=rnd, utility=self.utility, labelers=loop.labelers, noise=loop.label_noise,
                                        tie_threshold=loop.tie_threshold, seed=loop.seed)
        self.step(f"round {r}: labelled")
        self.labelled.append(rnd.number)
        return figures

    def train_reward(self, r: int, rnd: Round):
        loop = self.loop
        self.rm = run_execute(run=services.run_create(
            project=self.project, kind="reward", base_artifact=self.round0_policy, rounds=list(self.labelled),
            config={"seed": loop.seed, "max_steps": loop.reward_model_steps, "learning_rate": loop.reward_learning_rate,
                    "group_lr_scaling": loop.reward_group_lr_scaling, "batch_size": 8, "eval_every": 10_000, "checkpoint_every": 10_000, "eval_fraction": 0.2,
                    "num_threads": loop.num_threads}), in_process=self.settings.in_process).artifact
        final_eval = self.rm.run.summary.get("final_eval") or {}
        self.step(f"round {r}: reward model")
        return self.rm, {"rm_accuracy": final_eval.get("accuracy"), "rm_eval_pairs": final_eval.get("pairs")}

    def train_policy(self, r: int, rnd: Round, policy, reward_model, config, *, retry: bool):
        """DPO on the round's rankings, or PPO/GRPO on its prompts against its reward model, with ``config``'s
        settings (the retry: ``safer_config``'s) and the operator's explicit ones."""
        optimizer = self.settings.optimizer
        run_config = policy_run_config(optimizer, config)
        run_config.update(explicit_settings(self.settings.policy_config, attempt=run_config,
                                            loop=policy_run_config(optimizer, self.loop)))
        if optimizer == "dpo":  # the reference: the stored log-probs, or round 0's policy (``dpo_reference``)
            run = services.run_create(project=self.project, kind="dpo", config=run_config, base_artifact=policy.policy,
                                      rounds=[rnd.number], reference_artifact=self.dpo_reference(policy.policy, config))
        else:
            run = services.run_create(project=self.project, kind=optimizer, config=run_config,
                                      base_artifact=policy.policy, reward_artifact=reward_model, round=rnd)
        run = run_execute(run=run, in_process=self.settings.in_process)
        if not retry:
            self.step(f"round {r}: {optimizer}")
        summary = run.summary or {}
        change = summary.get("rm_score_change")  # PPO/GRPO: the RM score trend during the run
        early = {f"dpo_{k}": summary[k] for k in ("best_step", "best_eval_accuracy", "stopped_early") if k in summary}
        return _trained(run.artifact, name=f"{run.kind} run {run.pk}'s policy",
                        figures={"policy_run": run.pk, **early},  # DPO's early stopping, when it is on
                        carried={} if change is None else {"rm_score_change": change})

    @staticmethod
    def dpo_reference(policy: ModelArtifact, config) -> ModelArtifact | None:
        """DPO's reference policy: None (the stored generation log-probs of the round's policy), or with
        ``dpo_reference="round0"`` round 0's policy: the oldest policy of ``policy``'s lineage, as the health
        gate finds round 0 (``training.health.round0_artifact``)."""
        if config.dpo_reference != "round0":
            return None
        from training.health import round0_artifact

        round0 = round0_artifact(start=policy)
        if round0 is None:
            raise InvalidInput(f'dpo_reference "round0": {policy.name} (#{policy.pk}) has no policy in its lineage',
                               location="overrides")
        return round0

    def record(self, r: int, rnd: Round, figures: dict, previous: dict | None) -> dict:
        report = round_report_record(round=rnd, metrics={k: v for k, v in figures.items() if k != "round"},
                                     policy=self.generator)
        self.previous = rnd
        return {**figures, **report.metrics, "flags": [report.flag_reason] if report.flag_reason else []}


def _trained(artifact: ModelArtifact, **fields):
    from training.ml.loop import Trained

    return Trained(artifact, {**(artifact.health or {}), "healthy": artifact.healthy}, **fields)


def loop_run(*, project: Project, settings: LoopSettings, policy: ModelArtifact | None = None, log=print,
             step=lambda label: None) -> list[dict]:
    """Rounds 0..settings.rounds (``training.ml.loop.loop_rounds`` on ``DatabaseSteps``); returns each round's
    figures (also stored on its RoundReport)."""
    from annotation.utility import load_utility
    from training.ml.loop import loop_rounds

    if settings.optimizer not in OPTIMIZERS:
        raise InvalidInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}", location="optimizer")
    utility, loop = load_utility(settings.utility), _loop_config(settings)
    steps = DatabaseSteps(project=project, settings=settings, loop=loop, utility=utility, policy=policy, log=log,
                          step=step)
    return loop_rounds(steps, loop, log=log)
