"""Jobs of the policy side: SFT, generation of a round, DPO, PPO and GRPO (registered in ``training.jobs.JOBS``).

Each job reads its inputs from the database (demonstrations, the round's prompts, the snapshot's ranked
groups, the prompt pool), calls the pure trainer in ``training/ml`` with the run's hooks, and returns the
policy directory to register as a POLICY artifact (its parent is the run's base artifact: lineage).
Generation registers nothing: it writes the round's samples and opens the round, in one transaction.
Trainers are imported inside the functions so the web process never imports torch.
"""
from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

from django.db import transaction

from annotation.errors import InvalidInput
from annotation.hooks import hook_check, hook_names, hook_resolve
from annotation.models import Project, Round, Sample
from training.health import health_watch_for
from training.jobs import JobFailed, JobResult, JobSpec, config_parse
from training.ml.types import TrainHooks
from training.models import DatasetSnapshot, ModelArtifact, RoundReport, TrainingRun
from training.policy_data import demonstrations_all, pool_prompts_all

POLICY = ModelArtifact.Kind.POLICY


def _policy_result(summary: dict, run: TrainingRun, hooks: TrainHooks) -> JobResult:
    """The trained policy to register, after the health gate (``training.health.policy_gate``) checked it: the
    last healthy in-run policy when the final one fails; the verdict and figures go in the summary and on the
    artifact; an unhealthy policy is registered but may not generate a round without a recorded override."""
    from training.health import policy_gate

    stopped = bool(summary.get("stopped"))
    model_dir = None if stopped or not summary.get("policy_dir") else \
        policy_gate(run=run, policy_dir=summary["policy_dir"], summary=summary, log=hooks.log)
    return JobResult(summary=summary, model_dir=model_dir, artifact_kind=POLICY, stopped=stopped)


# ----------------------------------------------------------------------------- SFT
def top_ranked_examples(groups) -> list[tuple[list[dict], str]]:
    """(prompt, response) for every response in the best tier of each ranking, once per prompt and text."""
    seen, out = set(), []
    for group in groups:
        for tiers in group.rankings:
            for index in tiers[0] if tiers else []:
                key = (group.prompt_id, group.responses[index])
                if key not in seen:
                    seen.add(key)
                    out.append((group.messages, group.responses[index]))
    return out


def sft_examples(*, project: Project, snapshot: DatasetSnapshot | None) -> list[tuple[list[dict], str]]:
    """The project's demonstrations plus, when the run has a snapshot, the top-ranked responses in it."""
    from training.selectors import snapshot_ranked_groups

    examples = demonstrations_all(project=project)
    if snapshot is not None:
        examples += top_ranked_examples(snapshot_ranked_groups(snapshot=snapshot))
    return examples


def sft_check(*, project: Project, config, snapshot, round) -> None:
    if snapshot is None and not project.demonstrations.exists():
        raise InvalidInput(f"Project {project.slug} has no demonstrations: import some, or give rounds to train "
                           "on their top-ranked responses.", location="rounds")


def sft_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from training.ml.trainers.sft import train_sft

    config = config_parse(kind=run.kind, data=run.config)
    examples = sft_examples(project=run.project, snapshot=run.snapshot)
    if not examples:
        raise JobFailed("No demonstrations and no top-ranked responses to fine-tune on.")
    hooks.log(f"SFT on {len(examples)} examples")
    summary = train_sft(config, examples, output_dir=output_dir, hooks=hooks, resume=True,
                        health_watch=health_watch_for(run=run, config=config))
    return _policy_result(summary, run, hooks)


# ----------------------------------------------------------------------------- generation
def generate_check(*, project: Project, config, snapshot, round) -> None:
    if round is None or round.project_id != project.id:
        raise InvalidInput("A generation run fills a round of this project: use round_start.", location="round")
    if round.status != Round.Status.GENERATING or not round.prompts.exists():
        raise InvalidInput(f"Round {round.number} is not waiting for samples.", location="round")


def _health(prompts, samples) -> dict:
    flat = [(p.id, s) for p, group in zip(prompts, samples) for s in group]
    return {
        "eos_rate": statistics.fmean(s.ended_with_eos for _, s in flat),
        "distinct_rate": len({(pid, s.text) for pid, s in flat}) / len(flat),
        "mean_tokens": statistics.fmean(s.num_tokens for _, s in flat),
        "mean_logprob": statistics.fmean(s.logprob for _, s in flat),
    }


def generate_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    """K samples per prompt of the run's round from the policy; then, in one transaction, the samples,
    the round's sampling parameters and status OPEN. A retried run whose round is already open re-uses it."""
    from training.ml.generation import generate_samples, load_policy

    config = config_parse(kind=run.kind, data=run.config)
    rnd = run.round
    if rnd is None:
        raise JobFailed("The generation run has no round to fill.")
    if rnd.status == Round.Status.OPEN and Sample.objects.filter(prompt__round=rnd).exists():
        hooks.log(f"round {rnd.number} is already open: nothing to generate")
        return JobResult(summary=dict(run.summary or {}, reused=True), model_dir=None)
    prompts = list(rnd.prompts.order_by("id"))
    model, tokenizer = load_policy(config.base_model, config.adapter or None)
    samples, total = [], -(-len(prompts) // config.batch_size)
    for step in range(total):
        if hooks.should_stop():
            Round.objects.filter(pk=rnd.pk, status=Round.Status.GENERATING).update(status=Round.Status.CLOSED)
            return JobResult(summary={"stopped": True, "steps": step}, model_dir=None, stopped=True)
        chunk = prompts[step * config.batch_size: (step + 1) * config.batch_size]
        samples += generate_samples(
            config.base_model, [p.messages for p in chunk], k=config.k, temperature=config.temperature,
            top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed * 100_003 + step,
            batch_size=config.batch_size, model=model, tokenizer=tokenizer,
        )
        hooks.on_step(step + 1, total, {"prompts": len(samples)})
    health = _health(prompts, samples)
    written, dropped = samples_write(run=run, rnd=rnd, prompts=prompts, samples=samples, config=config, health=health)
    hooks.log(f"round {rnd.number}: {written} samples for {len(prompts) - dropped} prompts; round open"
              + (f" ({dropped} prompts dropped: fewer than {config.k} distinct clean samples)" if dropped else ""))
    return JobResult(summary={"samples": written, "prompts": len(prompts) - dropped, "prompts_dropped": dropped,
                              "steps": total, **health}, model_dir=None)


def samples_write(*, run: TrainingRun, rnd: Round, prompts, samples, config, health: dict) -> tuple[int, int]:
    """Write every sample and open the round in one transaction; prompts without K distinct texts are removed."""
    model_name = (run.base_artifact.name if run.base_artifact else Path(config.base_model).name)[:200]
    rows, drop = [], []
    for prompt, group in zip(prompts, samples, strict=True):
        if not samples_usable(group, config.k):
            drop.append(prompt.pk)
            continue
        rows += [Sample(prompt=prompt, text=s.text, text_sha256=hashlib.sha256(s.text.encode()).hexdigest(),
                        position=i, model_name=model_name, logprob=s.logprob, num_tokens=s.num_tokens)
                 for i, s in enumerate(group)]
    if not rows:
        raise JobFailed(f"The policy produced fewer than {config.k} distinct samples for every prompt.")
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != Round.Status.GENERATING:
            raise JobFailed(f"Round {rnd.number} is {locked.status}, no longer waiting for samples.")
        locked.prompts.filter(pk__in=drop).delete()
        Sample.objects.bulk_create(rows, batch_size=2000)
        locked.status = Round.Status.OPEN
        locked.sampling_params = {**locked.sampling_params, **_sampling(config)}
        locked.save(update_fields=["status", "sampling_params"])
        report, _ = RoundReport.objects.get_or_create(round=locked, defaults={"policy": run.base_artifact})
        report.metrics = {**report.metrics, **health}
        report.save(update_fields=["metrics", "updated_at"])
    return len(rows), len(drop)


def samples_usable(group, k: int) -> bool:
    """K distinct texts, none with a NUL byte (model output is untrusted; PostgreSQL text refuses NUL, and a
    changed text would no longer match its stored log-prob). HTML in samples is escaped on output."""
    return len({s.text for s in group}) >= k and not any("\x00" in s.text for s in group)


def _sampling(config) -> dict:
    keys = ("k", "temperature", "top_p", "max_new_tokens", "seed", "base_model", "adapter")
    return {key: getattr(config, key) for key in keys}


# ----------------------------------------------------------------------------- DPO
def dpo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    """DPO on the snapshot's ranked groups; the reference is each sample's stored generation log-prob."""
    from training.ml.trainers.dpo import train_dpo
    from training.selectors import snapshot_ranked_groups

    config = config_parse(kind=run.kind, data=run.config)
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    if not groups:
        raise JobFailed("The dataset snapshot holds no ranked prompts.")
    missing = sum(lp is None for g in groups for lp in g.ref_logprobs)
    hooks.log(f"snapshot {run.snapshot_id}: {len(groups)} prompts; "
              f"{missing} responses without a stored reference log-prob")
    try:  # every prompt trains: the loop's held-out figure is the reward model's accuracy
        summary = train_dpo(config, groups, [], output_dir=output_dir, hooks=hooks, resume=True,
                            health_watch=health_watch_for(run=run, config=config))
    except ValueError as error:  # e.g. every group fully tied: bad data, not a crash
        raise JobFailed(str(error)) from error
    return _policy_result(summary, run, hooks)


# ----------------------------------------------------------------------------- PPO and GRPO
def rl_check(*, project: Project, config, snapshot, round) -> None:
    if not config.reward_model and not config.reward_fn:
        raise InvalidInput("Give a reward model (a registered reward artifact) and/or a registered reward function "
                           f"({', '.join(hook_names(kind='reward_fn')) or 'none registered'}).",
                           location="config.reward_model")
    if config.reward_model:
        from training.jobs import check_model_source

        check_model_source(config.reward_model, location="config.reward_model")
    if config.reward_fn:  # a name from the operator's registry; nothing is imported here
        hook_check(kind="reward_fn", name=config.reward_fn, location="config.reward_fn")
    if not pool_prompts_all(project=project):
        raise InvalidInput(f"Project {project.slug} has no prompts to roll out on: import a prompt pool.",
                           location="project")
    if getattr(config, "ptx_coef", 0) > 0 and not project.demonstrations.exists():
        raise InvalidInput("PPO-ptx (ptx_coef > 0) trains on demonstrations: import some first.",
                           location="config.ptx_coef")


def rl_prompts(run: TrainingRun) -> list[list[dict]]:
    """A loop round's PPO/GRPO run rolls out on that round's prompts (as ``training.ml.loop`` does); a run
    started without a round, on the project's prompt pool."""
    if run.round_id is not None and run.round.prompts.exists():
        return list(run.round.prompts.order_by("id").values_list("messages", flat=True))
    return pool_prompts_all(project=run.project)


def rm_score_change(run: TrainingRun) -> float | None:
    """How much the reward model's score rose during the run (``training.ml.loop.rm_score_trend`` over every
    step stored, earlier attempts included); None when the run logged no reward-model score."""
    import math

    from training.ml.loop import rm_score_trend

    trend = rm_score_trend([p.values for p in run.metrics.filter(split="train").order_by("step")])
    return trend if math.isfinite(trend) else None


def _rl_job(train, run: TrainingRun, output_dir: Path, hooks: TrainHooks, **extra) -> JobResult:
    config = config_parse(kind=run.kind, data=run.config)
    prompts = rl_prompts(run)
    where = f"round {run.round.number}'s" if run.round_id is not None else "pool"
    hooks.log(f"{run.kind.upper()} on {len(prompts)} {where} prompts; reward: "
              + " + ".join(x for x in (config.reward_model and "reward model", config.reward_fn) if x))
    # resolved only through the operator's registry: a stored name that is no longer registered (or an old
    # row holding "module:function") fails the run, and nothing it names is imported
    reward_fn = hook_resolve(kind="reward_fn", name=config.reward_fn, location="config.reward_fn") \
        if config.reward_fn else None
    try:
        summary = train(config, prompts, policy_dir=config.base_model, output_dir=str(output_dir), hooks=hooks,
                        resume=True, reward_fn=reward_fn, health_watch=health_watch_for(run=run, config=config),
                        **extra)
    except ValueError as error:
        raise JobFailed(str(error)) from error
    if not summary.get("stopped"):  # the over-optimisation monitor's evidence (training.rounds.flags_update)
        summary["rm_score_change"] = rm_score_change(run)
    return _policy_result(summary, run, hooks)


def ppo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from transformers import AutoTokenizer

    from training.ml.loop import ptx_texts_from
    from training.ml.trainers.ppo import train_ppo

    ptx = None
    if run.config.get("ptx_coef"):  # the same PPO-ptx texts as training.ml.loop: chat-rendered prompt + response
        tokenizer = AutoTokenizer.from_pretrained(run.config["base_model"])
        ptx = ptx_texts_from(demonstrations_all(project=run.project), tokenizer)
    return _rl_job(train_ppo, run, output_dir, hooks, ptx_texts=ptx)


def grpo_job(run: TrainingRun, output_dir: Path, hooks: TrainHooks) -> JobResult:
    from training.ml.trainers.grpo import train_grpo

    return _rl_job(train_grpo, run, output_dir, hooks)


POLICY_JOBS: dict[str, JobSpec] = {
    TrainingRun.Kind.SFT: JobSpec(run=sft_job, snapshot="optional", check=sft_check),
    TrainingRun.Kind.GENERATE: JobSpec(run=generate_job, snapshot="none", check=generate_check),
    TrainingRun.Kind.DPO: JobSpec(run=dpo_job),
    TrainingRun.Kind.PPO: JobSpec(run=ppo_job, snapshot="none", check=rl_check),
    TrainingRun.Kind.GRPO: JobSpec(run=grpo_job, snapshot="none", check=rl_check),
}
