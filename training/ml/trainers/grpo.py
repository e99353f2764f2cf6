"""GRPO (Shao et al. 2024): G samples per prompt, group-normalised outcome advantages, no critic.

One step: sample ``batch_size`` prompts × G responses → score them (reward model and/or rule-based
function) → Â_i = (r_i − mean_group) / std_group → ``num_iterations`` passes of the clipped objective with
a k3 KL penalty to the frozen reference (eq. 3) over minibatches. Ours rather than TRL's ``GRPOTrainer``:
``bench/bench_grpo.py`` runs both on the same model, prompts and reward and docs/ppo_grpo.md gives the
figures. No Django here; progress goes through ``hooks``.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from training.ml.checkpoint import checkpoint_latest, checkpoint_load, checkpoint_save
from training.ml.config import GRPOConfig, loading
from training.ml.losses import grpo_loss
from training.ml.rl import clip_fraction, entropy_from_logits, group_advantages, masked_mean
from training.ml.rollout import (
    RewardFn, RewardScorer, Rollout, batched_logprobs, reward_fn_unresolved, response_logits,
    sample_rollout, token_logprobs,
)
from training.ml.trainers.ppo import rl_steps, run_summary, total_steps
from training.ml.types import NullHooks, TrainHooks


def _minibatch_step(policy, config: GRPOConfig, rollout: Rollout, tensors, optimizer, scheduler, reuse_logp: bool):
    mask = rollout.response_mask  # (b, T)
    logits = response_logits(policy, rollout, config.temperature)  # (b, T, V)
    logp = token_logprobs(logits, rollout.response_ids)  # (b, T)
    old_logp = logp.detach() if reuse_logp else tensors["old_logp"]  # on-policy: ratio = 1, gradient = PG
    ref_logp = tensors["ref_logp"] if config.beta > 0 else logp.detach()
    loss, ratio, kl = grpo_loss(
        logp, old_logp, ref_logp, tensors["advantages"], mask, clip_eps=config.clip_eps, beta=config.beta,
        per_sequence=config.loss_aggregation == "sequence",
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits), mask)
    return {"policy_loss": loss.item(), "clip_fraction": clip_fraction(ratio, mask, config.clip_eps).item(),
            "kl": (kl * mask).sum(1).mean().item(), "entropy": entropy.item()}


def grpo_step(policy, reference, tokenizer, config: GRPOConfig, prompts, scorer: RewardScorer,
              optimizer, scheduler, step: int) -> dict[str, float]:
    """One GRPO iteration on one batch of prompts; returns its metrics."""
    G = config.samples_per_prompt
    n = len(prompts) * G
    mb = config.mini_batch_size or n
    reuse_logp = config.num_iterations == 1 and mb >= n  # a single on-policy update needs no old log-probs
    rollout = sample_rollout(policy, tokenizer, prompts, samples_per_prompt=G, max_new_tokens=config.max_new_tokens,
                             temperature=config.temperature, top_p=config.top_p, with_logprobs=not reuse_logp)
    mask = rollout.response_mask
    with torch.no_grad():
        score, parts = scorer.score(prompts, rollout)  # (B,)
        score = score - config.missing_eos_penalty * (~rollout.ended).float()
        advantages = group_advantages(score, G, scale=config.scale_rewards)  # (B,)
        ref_logp = (batched_logprobs(reference, rollout, config.temperature, 64) * mask if config.beta > 0
                    else torch.zeros_like(mask))
    tensors = {"old_logp": rollout.logprobs, "ref_logp": ref_logp, "advantages": advantages}
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    updates = []
    for _ in range(config.num_iterations):
        for rows in torch.randperm(n, generator=generator).split(mb):
            part = {k: v[rows] for k, v in tensors.items()}
            updates.append(_minibatch_step(policy, config, rollout.select(rows), part, optimizer, scheduler, reuse_logp))
    stats = {key: sum(u[key] for u in updates) / len(updates) for key in updates[0]}
    stats.update({
        "reward": score.mean().item(),
        "reward_group_std": score.view(-1, G).std(dim=1).mean().item(),
        "response_length": mask.sum(1).mean().item(),
        "eos_rate": rollout.ended.float().mean().item(),
        **{name: value.mean().item() for name, value in parts.items()},
    })
    return stats


def train_grpo(
    config: GRPOConfig, prompts: list[list[dict]], *, policy_dir: str, output_dir: str,
    reward_fn: RewardFn | None = None, reward_model_dir: str | None = None, hooks: TrainHooks | None = None,
    resume: bool = True,
) -> dict:
    """Train the policy in ``policy_dir`` with GRPO; save it to ``output_dir/policy``; return the summary.

    Same contract as ``train_ppo``: the reward model defaults to the config's ``reward_model``, ``reward_fn``
    is the resolved callable;
    checkpoints in ``output_dir/checkpoints``; ``hooks.should_stop()`` checkpoints and returns early.
    """
    hooks = hooks or NullHooks()
    if not prompts:
        raise ValueError("GRPO needs at least one prompt")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    if reward_fn is None and config.reward_fn:
        raise reward_fn_unresolved(config.reward_fn)
    scorer = RewardScorer(reward_model_dir=reward_model_dir or config.reward_model or None, reward_fn=reward_fn,
                          max_length=config.max_length)
    with loading("base_model"):
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()  # eval: no dropout
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    reference = copy.deepcopy(policy).requires_grad_(False)
    total = total_steps(config, len(prompts))
    n = config.batch_size * config.samples_per_prompt
    per_step = config.num_iterations * math.ceil(n / (config.mini_batch_size or n))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total * per_step),
                              num_training_steps=total * per_step)
    out, step = Path(output_dir), 0
    latest = checkpoint_latest(out / "checkpoints") if resume else None
    if latest is not None:
        step = checkpoint_load(latest, model=policy, optimizer=optimizer, scheduler=scheduler)["step"]
        hooks.log(f"resumed from {latest.name} (step {step} of {total})")

    def save_checkpoint(at: int) -> None:
        checkpoint_save(root=out / "checkpoints", step=at, model=policy, optimizer=optimizer, scheduler=scheduler,
                        keep=config.keep_checkpoints)

    def one_step(batch: list[list[dict]], at: int) -> dict[str, float]:
        return grpo_step(policy, reference, tokenizer, config, batch, scorer, optimizer, scheduler, at)

    history, step, stopped = rl_steps(prompts, config, start=step, total=total, step_fn=one_step, hooks=hooks,
                                      save_checkpoint=save_checkpoint)
    if not stopped:
        policy.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
    return run_summary(history, step, total, stopped, out)
