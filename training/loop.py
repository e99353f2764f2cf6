"""The headless collect-train loop on the database: generate -> simulated labelling -> reward model ->
policy run (DPO, PPO or GRPO) -> next round, each step through the same services and jobs as the browser.

Every run is created with ``run_create``/``round_start`` and executed by ``run_execute``: it claims the run
and supervises ``python -m training.runner RUN_ID`` exactly as the Celery task does (or, with
``in_process=True``, runs the child side in this process; tests use that). If a worker claimed the run
first, it waits for the worker. Rows, metrics, checkpoints and artifacts are the same either way.

Per round the figures of ``training.ml.loop.round_metrics`` (mean utility ± standard error, KL to round 0,
health) plus the reward model's held-out accuracy and its mean score on this round's and the previous
round's samples are stored on the round's ``RoundReport``; ``training.rounds.flags_update`` flags
over-optimisation from them.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
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
from training.selectors import artifact_dir, artifact_path_contained, policy_load

OPTIMIZERS = ("dpo", "ppo", "grpo")


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
    from training.ml.generation import prompt_ids  # noqa: F401  (torch and transformers are needed here)
    from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer

    texts = [m["content"] for msgs in project.pool_prompts.values_list("messages", flat=True) for m in msgs]
    for messages, response in project.demonstrations.values_list("messages", "response"):
        texts += [m["content"] for m in messages] + [response]
    root = artifact_path_contained(Path("base") / project.slug, location="project")  # written inside the root only
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
    if settings.overrides.get("dpo_reference", "previous") != "previous":  # DPO runs read the stored log-probs
        raise InvalidInput("dpo_reference: the round-0 anchor runs in the in-memory loop only (training.ml.loop)",
                           location="overrides")
    loop = LoopConfig(seed=settings.seed, rounds=settings.rounds, labelers=settings.labelers,
                      optimizer=settings.optimizer, **settings.overrides)  # optimizer: reward_model_steps
    if settings.prompts_per_round:
        loop.prompts_per_round = settings.prompts_per_round
    return loop


def _policy_run(*, project, settings: LoopSettings, loop, policy, rm, rnd: Round) -> TrainingRun:
    """The run that makes policy r+1 from policy r: DPO on the round's rankings, or PPO/GRPO on its prompts
    against the round's reward model, with the pure loop's settings (``ppo_config``/``grpo_config``)."""
    if settings.optimizer == "dpo":
        from training.ml.loop import dpo_settings

        common = {"seed": loop.seed, "num_threads": loop.num_threads, "eval_every": 10_000, "checkpoint_every": 10_000}
        config = {**common, **dpo_settings(loop), **settings.policy_config}
        return services.run_create(project=project, kind="dpo", config=config, base_artifact=policy,
                                   rounds=[rnd.number])
    config = rl_run_config(settings.optimizer, loop)
    config.update(settings.policy_config)
    return services.run_create(project=project, kind=settings.optimizer, config=config, base_artifact=policy,
                               reward_artifact=rm, round=rnd)


def safer_policy_config(policy_config: dict) -> dict:
    """``training.ml.loop.safer_config``'s rule on explicit policy-run settings: learning rate ÷2, β/kl_coef ×2."""
    out = dict(policy_config)
    for key, factor in (("learning_rate", 0.5), ("beta", 2.0), ("kl_coef", 2.0)):
        if key in out:
            out[key] = out[key] * factor
    return out


def policy_run_gated(*, project, settings: LoopSettings, loop, policy, rm, rnd: Round, log=print):
    """The round's policy run, through the health gate (checked by every policy job before its artifact is
    registered). A failure is retried once with ``safer_config``'s rule; if the retry fails too, returns
    (None, outcome): the caller keeps the round's policy. Else (the succeeded run, outcome)."""
    from training.ml.loop import SAFER_RULE, safer_config

    trained = run_execute(run=_policy_run(project=project, settings=settings, loop=loop, policy=policy, rm=rm,
                                          rnd=rnd), in_process=settings.in_process)
    if trained.artifact.healthy is not False:
        return trained, "passed"
    first = "; ".join(trained.artifact.health.get("reasons") or [])
    log(f"  round {rnd.number}: {trained.kind} run {trained.pk}'s policy failed the health gate ({first}); "
        f"retrying once with {SAFER_RULE}")
    safer = LoopSettings(**{**settings.__dict__, "policy_config": safer_policy_config(settings.policy_config)})
    retry = run_execute(run=_policy_run(project=project, settings=safer, loop=safer_config(loop), policy=policy,
                                        rm=rm, rnd=rnd), in_process=settings.in_process)
    outcome = f"run {trained.pk} failed the health gate ({first}); retry run {retry.pk} with {SAFER_RULE}: "
    if retry.artifact.healthy is not False:
        return retry, outcome + "passed"
    again = "; ".join(retry.artifact.health.get("reasons") or [])
    log(f"  round {rnd.number}: the retry failed too ({again}); keeping policy {policy.name} (#{policy.pk})")
    return None, outcome + f"failed again ({again}); kept policy #{policy.pk}"


def rl_run_config(optimizer: str, loop) -> dict:
    """A PPO/GRPO run's config from ``LoopConfig`` (one source of truth with ``training.ml.loop``); the policy
    and reward model paths are filled from the chosen artifacts by ``run_create``."""
    from training.ml.loop import grpo_config, ppo_config

    config = (ppo_config if optimizer == "ppo" else grpo_config)("", loop).to_dict()
    for key in ("base_model", "reward_model"):
        config.pop(key)
    return config


def loop_run(*, project: Project, settings: LoopSettings, policy: ModelArtifact | None = None, log=print,
             step=lambda label: None) -> list[dict]:
    """Rounds 0..settings.rounds; returns each round's figures (also stored on its RoundReport)."""
    from annotation.utility import load_utility
    from training.ml.generation import load_policy

    if settings.optimizer not in OPTIMIZERS:
        raise InvalidInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}", location="optimizer")
    utility, loop = load_utility(settings.utility), _loop_config(settings)
    started = time.perf_counter()
    policy = policy or policy_bootstrap(project=project, loop=loop, in_process=settings.in_process, log=log)
    round0_policy = policy
    round0 = policy_load(policy)
    history, labelled, rm, previous, carried = [], [], None, None, {}
    for r in range(settings.rounds + 1):
        prompts = pool_prompts_sample(project=project, n=loop.prompts_per_round, seed=loop.seed * 1000 + r)
        sampling = {"temperature": loop.temperature, "top_p": loop.top_p, "max_new_tokens": loop.max_new_tokens,
                    "seed": loop.seed * 1000 + r, "num_threads": loop.num_threads}
        gen = run_execute(run=round_start(project=project, policy_artifact=policy, prompts=prompts, sampling=sampling),
                          in_process=settings.in_process)
        step(f"round {r}: generated")
        rnd = gen.round
        figures = {"round": r, "round_number": rnd.number,
                   **round_measure(rnd=rnd, utility=utility, round0=round0, rm_artifact=rm, previous=previous,
                                   policy=None if policy.pk == round0_policy.pk else policy_load(policy)),
                   **carried}
        if history:  # the monitor's figures, as training.ml.loop prints them
            figures["utility_change"] = figures["utility_mean"] - history[-1]["utility_mean"]
        if r < settings.rounds:
            figures.update(round_label_simulated(rnd=rnd, utility=utility, labelers=loop.labelers,
                                                 noise=loop.label_noise, tie_threshold=loop.tie_threshold, seed=loop.seed))
            step(f"round {r}: labelled")
            labelled.append(rnd.number)
            rm = run_execute(run=services.run_create(
                project=project, kind="reward", base_artifact=round0_policy, rounds=list(labelled),
                config={"seed": loop.seed, "max_steps": loop.reward_model_steps, "learning_rate": loop.reward_learning_rate,
                        "batch_size": 8, "eval_every": 10_000, "checkpoint_every": 10_000, "eval_fraction": 0.2,
                        "num_threads": loop.num_threads}), in_process=settings.in_process).artifact
            figures["rm_accuracy"] = (rm.run.summary.get("final_eval") or {}).get("accuracy")
            figures["rm_eval_pairs"] = (rm.run.summary.get("final_eval") or {}).get("pairs")
            step(f"round {r}: reward model")
            trained, figures["gate"] = policy_run_gated(project=project, settings=settings, loop=loop, policy=policy,
                                                        rm=rm, rnd=rnd, log=log)
            carried = {}
            if trained is None:
                figures["gate_failed"] = True
            else:
                figures["policy_run"] = trained.pk
                change = (trained.summary or {}).get("rm_score_change")  # PPO/GRPO: RM score trend during the run
                carried = {} if change is None else {"rm_score_change": change}
                policy = trained.artifact
            step(f"round {r}: {settings.optimizer}")
        generator = ModelArtifact.objects.get(pk=gen.base_artifact_id)
        figures["policy_health"] = {"healthy": generator.healthy, "reasons": (generator.health or {}).get("reasons", []),
                                    "overridden": generator.health_override_at is not None}
        report = round_report_record(round=rnd, metrics={k: v for k, v in figures.items() if k != "round"},
                                     policy=generator)
        figures.update(report.metrics, elapsed_s=time.perf_counter() - started, flag=report.flag_reason)
        history.append(figures)
        log(format_round_line(figures))
        previous = rnd
    return history


def format_round_line(m: dict) -> str:
    def fmt(key, spec, scale=1.0, none="  -  "):
        value = m.get(key)
        return none if value is None else format(value * scale, spec)

    line = (f"[{m.get('elapsed_s', 0):6.1f}s] round {m['round']} (#{m['round_number']}): utility "
            f"{m['utility_mean']:+.3f} ± {m['utility_se']:.3f} | RM acc {fmt('rm_accuracy', '.3f')} | KL to r0 "
            f"{m['kl_to_round0']:.3f} | EOS {fmt('eos_rate', '.1f', 100)}% | distinct {100 * m['distinct_rate']:.1f}% "
            f"| NLL@r0 {m['nll_round0']:.3f} | tokens {m['mean_tokens']:.1f}")
    if "utility_change" in m and "rm_score_change" in m:
        line += f" | RM score Δ {m['rm_score_change']:+.3f}, utility Δ {m['utility_change']:+.3f}"
    healthy = (m.get("policy_health") or {}).get("healthy")
    if healthy is not None:
        line += f" | health {'ok' if healthy else 'FAILED'}"
    if m.get("gate") and m["gate"] != "passed":
        line += f"\n  GATE: {m['gate']}"
    return line + (f"\n  FLAG: {m['flag']}" if m.get("flag") else "")
