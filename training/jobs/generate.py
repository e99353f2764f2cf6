"""The generation kind: K samples per prompt of a round from the policy, written with the round's opening.

It registers nothing: it writes the round's samples and opens the round, in one transaction.
"""
from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Project, Round, Sample
from training.jobs.base import JobFailed, JobResult, run_config
from training.ml.types import TrainHooks
from training.models import RoundReport, TrainingRun


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

    config = run_config(run)
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
        locked.sampling_params = {**locked.sampling_params, **_sampling(config, stored=run.config)}
        locked.save(update_fields=["status", "sampling_params"])
        report, _ = RoundReport.objects.get_or_create(round=locked, defaults={"policy": run.base_artifact})
        report.metrics = {**report.metrics, **health}
        report.save(update_fields=["metrics", "updated_at"])
    return len(rows), len(drop)


def samples_usable(group, k: int) -> bool:
    """K distinct texts, none with a NUL byte (model output is untrusted; PostgreSQL text refuses NUL, and a
    changed text would no longer match its stored log-prob). HTML in samples is escaped on output."""
    return len({s.text for s in group}) >= k and not any("\x00" in s.text for s in group)


def _sampling(config, *, stored: dict) -> dict:
    """The round's sampling parameters; the models as the run's config stores them (root-relative inside the
    artifact root), not as this worker resolved them."""
    keys = ("k", "temperature", "top_p", "max_new_tokens", "seed")
    return {**{key: getattr(config, key) for key in keys},
            **{key: stored.get(key, getattr(config, key)) for key in ("base_model", "adapter")}}


