"""GRPO (Shao et al. 2024): G samples per prompt, group-normalised outcome advantages, no critic.

One step: sample ``batch_size`` prompts × G responses → score them (reward model and/or rule-based
function) → Â_i = (r_i − mean_group) / std_group → ``num_iterations`` passes of the clipped objective with
a k3 KL penalty to the frozen reference (eq. 3) over minibatches. Ours rather than TRL's ``GRPOTrainer``:
``bench/bench_grpo.py`` runs both on the same model, prompts and reward and docs/ppo_grpo.md gives the
figures. No Django here; progress goes through ``hooks``.

Several devices: under ``accelerate launch`` each process samples and scores the groups of its share of a
step's prompts (every W-th; the G samples of a prompt are seeded by (seed, step, prompt position), so they are
what one process would draw), walks the same global minibatches, and scales its part of each minibatch's
loss so that DDP's averaged gradient is the one-process gradient (``training.ml.distributed``). Only the
main process reports, checkpoints and saves. ``lora_r > 0`` trains a LoRA adapter; the reference is then the
policy with its adapter switched off (no second copy of the model).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import get_scheduler

from training.ml import distributed
from training.ml.checkpoint import checkpoint_resume, checkpoint_save
from training.ml.config import GRPOConfig
from training.ml.health_watch import HealthWatch, InRunHealth
from training.ml.losses import grpo_loss
from training.ml.precision import autocast, enable_gradient_checkpointing, resolve_mixed_precision
from training.ml.rl import entropy_from_logits, group_advantages
from training.ml.rollout import (
    RewardFn, RewardScorer, Rollout, reward_fn_unresolved, response_logits, sample_rollout, token_logprobs,
)
from training.ml.trainers.ppo import load_rl_policy, reference_logprobs, rl_steps, run_summary, sample_seeds, total_steps
from training.ml.types import NullHooks, TrainHooks


def _minibatch_step(trained, config: GRPOConfig, rollout: Rollout, tensors, optimizer, scheduler, reuse_logp: bool,
                    accelerator, precision: str, share: float) -> dict[str, float]:
    """One optimizer step on this process's rows of one minibatch; returns summed figures (see ``_means``).

    ``share`` is this process's count of the minibatch (sequences, or tokens for the token mean) and the loss
    is scaled by W·share/Σshare: DDP's average of the gradients is then the gradient of the whole minibatch.
    """
    mask = rollout.response_mask  # (b, T)
    with autocast(precision, accelerator.device):
        logits = response_logits(trained, rollout, config.temperature)  # (b, T, V)
    logp = token_logprobs(logits.float(), rollout.response_ids)  # (b, T)
    old_logp = logp.detach() if reuse_logp else tensors["old_logp"]  # on-policy: ratio = 1, gradient = PG
    ref_logp = tensors["ref_logp"] if config.beta > 0 else logp.detach()
    loss, ratio, kl = grpo_loss(
        logp, old_logp, ref_logp, tensors["advantages"], mask, clip_eps=config.clip_eps, beta=config.beta,
        per_sequence=config.loss_aggregation == "sequence",
    )
    if accelerator.num_processes > 1:
        loss = loss * distributed.global_mean_scales(accelerator, pair_weight=share, responses=0)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over processes here
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in trained.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    scheduler.step()
    real = mask if share else torch.zeros_like(mask)  # a padding process adds nothing to the figures
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > config.clip_eps).float()
        return {"policy_loss": loss.item() / accelerator.num_processes,
                "clipped": (clipped * real).sum().item(), "entropy": (entropy_from_logits(logits) * real).sum().item(),
                "kl": (kl * real).sum().item(), "tokens": real.sum().item(), "sequences": float(real.any(1).sum().item())}


def grpo_step(policy, trained, reference, tokenizer, config: GRPOConfig, prompts, scorer: RewardScorer,
              optimizer, scheduler, step: int, accelerator, precision: str = "no") -> dict[str, float]:
    """One GRPO iteration on one batch of prompts (this process's share of them); returns the step's metrics."""
    G, world = config.samples_per_prompt, accelerator.num_processes
    mine, padding = distributed.shard(range(len(prompts)), rank=accelerator.process_index, world=world)
    n = len(prompts) * G  # sequences of the whole step
    mb = config.mini_batch_size or n
    reuse_logp = config.num_iterations == 1 and mb >= n  # a single on-policy update needs no old log-probs
    local_prompts = [prompts[i] for i in mine]
    rollout = sample_rollout(policy, tokenizer, local_prompts, samples_per_prompt=G, max_new_tokens=config.max_new_tokens,
                             temperature=config.temperature, top_p=config.top_p, with_logprobs=not reuse_logp,
                             seeds=sample_seeds(config.seed, step, mine))
    mask = rollout.response_mask
    with torch.no_grad():
        score, parts = scorer.score(local_prompts, rollout)  # (b,)
        score = score - config.missing_eos_penalty * (~rollout.ended).float()
        advantages = group_advantages(score, G, scale=config.scale_rewards)  # (b,) within each prompt's group
        ref_logp = (reference_logprobs(policy, reference, rollout, config.temperature) * mask if config.beta > 0
                    else torch.zeros_like(mask))
    tensors = {"old_logp": rollout.logprobs, "ref_logp": ref_logp, "advantages": advantages}
    # Global row p·G + g (prompt position p in the step) -> this process's row; none on a padding process.
    local_of = {} if padding else {p * G + g: j * G + g for j, p in enumerate(mine) for g in range(G)}
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    updates = []
    for _ in range(config.num_iterations):
        for rows in torch.randperm(n, generator=generator).split(mb):  # the same minibatches on every process
            local = [local_of[r] for r in rows.tolist() if r in local_of]
            index = torch.tensor(local or [0])  # a process without rows still runs forward/backward, scaled by 0
            part = {k: v[index.to(v.device)] for k, v in tensors.items()}
            share = 0.0 if not local else (len(local) if config.loss_aggregation == "sequence"
                                           else mask[index.to(mask.device)].sum().item())
            updates.append(_minibatch_step(trained, config, rollout.select(index), part, optimizer, scheduler,
                                           reuse_logp, accelerator, precision, share))
    real = 0.0 if padding else 1.0
    sums = {
        "policy_loss": sum(u["policy_loss"] for u in updates), "clipped": sum(u["clipped"] for u in updates),
        "entropy": sum(u["entropy"] for u in updates), "kl": sum(u["kl"] for u in updates),
        "tokens": sum(u["tokens"] for u in updates), "sequences": sum(u["sequences"] for u in updates),
        "reward": real * score.sum().item(), "rows": real * score.numel(),
        "reward_group_std": real * score.view(-1, G).std(dim=1).sum().item(), "groups": real * len(mine),
        "response_length": real * mask.sum().item(), "eos_rate": real * rollout.ended.float().sum().item(),
        **{name: real * value.sum().item() for name, value in parts.items()},
    }
    if world > 1:
        sums = distributed.sums(sums, accelerator)  # the figures of the whole step, on every process
    rows, tokens = max(sums["rows"], 1.0), max(sums["tokens"], 1.0)
    return {
        "policy_loss": sums["policy_loss"] / len(updates), "clip_fraction": sums["clipped"] / tokens,
        "kl": sums["kl"] / max(sums["sequences"], 1.0), "entropy": sums["entropy"] / tokens,
        "reward": sums["reward"] / rows, "reward_group_std": sums["reward_group_std"] / max(sums["groups"], 1.0),
        "response_length": sums["response_length"] / rows, "eos_rate": sums["eos_rate"] / rows,
        **{name: sums[name] / rows for name in parts},
    }


def train_grpo(
    config: GRPOConfig, prompts: list[list[dict]], *, policy_dir: str, output_dir: str,
    reward_fn: RewardFn | None = None, reward_model_dir: str | None = None, hooks: TrainHooks | None = None,
    resume: bool = True, health_watch: HealthWatch | None = None,
) -> dict:
    """Train the policy in ``policy_dir`` with GRPO; save it to ``output_dir/policy``; return the summary.

    Same contract as ``train_ppo``: the reward model defaults to the config's ``reward_model``, ``reward_fn``
    is the resolved callable; checkpoints in ``output_dir/checkpoints``; ``hooks.should_stop()`` checkpoints
    and returns early. Under ``accelerate launch`` every process calls this with the same arguments.
    ``health_watch``: the in-run health check (``training.ml.health_watch``; main process only).
    """
    hooks = hooks or NullHooks()
    if not prompts:
        raise ValueError("GRPO needs at least one prompt")
    config.validate()
    accelerator = distributed.make_accelerator()  # one process: plain device placement; several: DDP over NCCL (CUDA) or gloo (CPU)
    main = accelerator.is_main_process
    hooks = hooks if main else NullHooks()
    torch.set_num_threads(distributed.threads_per_process(config.num_threads, accelerator.num_processes))
    precision = resolve_mixed_precision(config.mixed_precision, accelerator.device)
    torch.manual_seed(config.seed)
    if reward_fn is None and config.reward_fn:
        raise reward_fn_unresolved(config.reward_fn)
    scorer = RewardScorer(reward_model_dir=reward_model_dir or config.reward_model or None, reward_fn=reward_fn,
                          max_length=config.max_length, device=accelerator.device)
    policy, reference, tokenizer = load_rl_policy(policy_dir, config, accelerator.device)
    enable_gradient_checkpointing(policy, config.gradient_checkpointing)
    total = total_steps(config, len(prompts))
    n = config.batch_size * config.samples_per_prompt
    per_step = config.num_iterations * math.ceil(n / (config.mini_batch_size or n))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total * per_step),
                              num_training_steps=total * per_step)
    out = Path(output_dir)
    step, _ = checkpoint_resume(out / "checkpoints", model=policy, optimizer=optimizer, scheduler=scheduler,
                                log=hooks.log, resume=resume, total=total)
    trained = distributed.wrap(policy, accelerator)
    health = InRunHealth.start(health_watch, config, out, hooks, main=main, resume_step=step)

    def save_checkpoint(at: int) -> None:
        if main:
            checkpoint_save(root=out / "checkpoints", step=at, model=policy, optimizer=optimizer, scheduler=scheduler,
                            keep=config.keep_checkpoints)

    def one_step(batch: list[list[dict]], at: int) -> dict[str, float]:
        metrics = grpo_step(policy, trained, reference, tokenizer, config, batch, scorer, optimizer, scheduler, at,
                            accelerator, precision)
        return {**metrics, **health.at_step(at + 1, total, policy, tokenizer)}

    history, step, stopped = rl_steps(prompts, config, start=step, total=total, step_fn=one_step, hooks=hooks,
                                      save_checkpoint=save_checkpoint, accelerator=accelerator)
    if not stopped and main:
        policy.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
    accelerator.wait_for_everyone()  # no process returns before the policy is on disk
    return {**run_summary(history, step, total, stopped, out), "processes": accelerator.num_processes,
            **health.summary()}
