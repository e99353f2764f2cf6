"""PPO against a reward model and/or reward function, with a per-token KL penalty (InstructGPT), and PPO-ptx.

One step: sample ``batch_size`` prompts × ``samples_per_prompt`` responses from the policy → score them →
per-token reward −β·KL(π‖π_ref) plus the score on the last token → GAE advantages → ``ppo_epochs`` passes of
clipped policy + value losses over minibatches (plus γ × LM loss on ptx texts) → adapt β.
The critic is a linear value head on the policy's last hidden state, or a separate model initialised from
the reward model (same tokenizer required). No Django here; progress goes through ``hooks``.

Several devices: under ``accelerate launch`` each process samples, scores and evaluates (values, reference
log-probs, GAE) its share of a step's prompts (every W-th; a prompt's samples are seeded by (seed, step, prompt
position), so they are what one process would draw). Advantage whitening takes its mean and variance over the
whole step's batch (sums all-reduced), the KL controller sees the whole batch's KL, every process walks the same
global minibatches, and the policy with its value head or critic runs as one module under DDP
(``PolicyValue``) whose loss each process scales by its share of the minibatch's tokens, so the averaged
gradient is the one-process gradient (``training.ml.distributed``). The PPO-ptx term is computed on the same
texts by every process and left unscaled (the average of equal gradients is that gradient). Only the main
process reports, checkpoints and saves.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

from training.ml import distributed
from training.ml.checkpoint import checkpoint_resume, checkpoint_save
from training.ml.config import PPOConfig, loading
from training.ml.health_watch import HealthWatch, InRunHealth
from training.ml.losses import ppo_policy_loss, ppo_value_loss
from training.ml.precision import autocast, enable_gradient_checkpointing, resolve_mixed_precision
from training.ml.rl import (
    AdaptiveKLController, FixedKLController, entropy_from_logits, gae_advantages, kl_penalised_rewards,
    masked_whiten,
)
from training.ml.rollout import (
    RewardFn, RewardScorer, Rollout, batched_logprobs, reward_fn_unresolved, position_ids_for, prompt_batch,
    sample_rollout, token_logprobs,
)
from training.ml.types import NullHooks, TrainHooks


class ValueHead(nn.Module):
    """V(s_t) from the hidden state that predicts token t: (B, T, H) -> (B, T). Starts at V = 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


@dataclass
class PPOModels:
    policy: nn.Module  # trained
    tokenizer: object
    reference: nn.Module | None  # frozen copy of the starting policy (None with LoRA: the adapter switched off)
    value_head: nn.Module | None  # on the policy's trunk, or
    critic: nn.Module | None  # a separate sequence-classification model used per token

    def trainable(self) -> list[nn.Parameter]:
        extra = self.value_head if self.value_head is not None else self.critic
        return [p for p in (*self.policy.parameters(), *extra.parameters()) if p.requires_grad]

    def value_state(self) -> dict[str, torch.Tensor]:
        module = self.value_head if self.value_head is not None else self.critic
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def load_value_state(self, state: dict[str, torch.Tensor]) -> None:
        (self.value_head if self.value_head is not None else self.critic).load_state_dict(state)


def _trunk_hidden(model, rollout: Rollout) -> torch.Tensor:
    """Last hidden states at the positions that predict each response token: (B, T, H)."""
    trunk = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA policy: its wrapped model
    out = trunk.base_model(
        input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
        position_ids=position_ids_for(rollout.attention_mask),
    )
    return out.last_hidden_state[:, rollout.prompt_width - 1 : -1, :]


def policy_and_values(models: PPOModels, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy logits (B, T, V) over each response position and values V(s_t) (B, T), in one trunk pass."""
    hidden = _trunk_hidden(models.policy, rollout)  # (B, T, H)
    logits = models.policy.get_output_embeddings()(hidden).float() / temperature  # (B, T, V)
    if models.value_head is not None:
        return logits, models.value_head(hidden)
    critic_hidden = _trunk_hidden(models.critic, rollout)  # (B, T, H_critic)
    return logits, models.critic.score(critic_hidden).squeeze(-1).float()


class PolicyValue(nn.Module):
    """The trained modules of PPO as one module: its forward gives the policy's logits, the values and, with
    ``ptx_texts``, the PPO-ptx loss, so DDP (which syncs the gradients of what runs through one forward)
    covers the policy and the value head or critic at once. On one process it is used as it is."""

    def __init__(self, models: PPOModels) -> None:
        super().__init__()
        self.policy, self.value_head, self.critic = models.policy, models.value_head, models.critic
        self.models = models  # a plain dataclass: its modules are registered once, above

    def forward(self, rollout: Rollout, temperature: float, ptx_texts: list[str] | None = None, max_length: int = 0):
        logits, values = policy_and_values(self.models, rollout, temperature)  # (b, T, V), (b, T)
        lm = ptx_loss(self.policy, self.models.tokenizer, ptx_texts, max_length) if ptx_texts else None
        return logits, values, lm


def load_rl_policy(policy_dir: str, config, device) -> tuple[nn.Module, nn.Module | None, object]:
    """(policy, reference, tokenizer) for PPO/GRPO on ``device``. With ``lora_r > 0`` the policy gets a fresh
    LoRA adapter (its base named ``policy_dir``) and the reference is None: it is the policy with the adapter
    switched off (``reference_logprobs``), so a large model is held once."""
    with loading("base_model"):
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()  # eval: no dropout, so ratios start at 1
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    reference = None
    if config.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          task_type="CAUSAL_LM", target_modules=config.lora_target_modules or "all-linear")
        with loading("lora_target_modules", config.lora_target_modules or "all-linear"):
            policy = get_peft_model(policy, lora).eval()
        policy.peft_config["default"].base_model_name_or_path = policy_dir  # the adapter names its base
    else:
        reference = copy.deepcopy(policy).requires_grad_(False).to(device)
    return policy.to(device), reference, tokenizer


@torch.no_grad()
def reference_logprobs(policy, reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log π_ref of each response token (B, T): the frozen copy, or the LoRA policy with its adapter off."""
    if reference is not None:
        return batched_logprobs(reference, rollout, temperature, batch_size=64)
    with policy.disable_adapter():
        return batched_logprobs(policy, rollout, temperature, batch_size=64)


def sample_seeds(seed: int, step: int, positions) -> list[int]:
    """The sampling seed of each prompt position of step ``step``: what a prompt's samples are, on any process."""
    return [(seed * 1_000_003 + step) * 65_537 + p for p in positions]


def load_ppo_models(policy_dir: str, config: PPOConfig, reward_model_dir: str | None, device="cpu") -> PPOModels:
    policy, reference, tokenizer = load_rl_policy(policy_dir, config, device)
    if config.value_model == "head":
        return PPOModels(policy, tokenizer, reference, ValueHead(policy.config.get_text_config().hidden_size).to(device), None)
    if not reward_model_dir:
        raise ValueError("value_model='reward_model' needs a reward model directory to initialise the critic from")
    if AutoTokenizer.from_pretrained(reward_model_dir).get_vocab() != tokenizer.get_vocab():
        raise ValueError("value_model='reward_model' needs the reward model to share the policy's tokenizer; "
                         "use value_model='head' with a reward model on another tokenizer")
    critic = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    if not hasattr(critic, "score"):
        raise ValueError(f"{type(critic).__name__} has no 'score' head to use as a per-token critic")
    return PPOModels(policy, tokenizer, reference, None, critic.to(device))


def ptx_loss(policy, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """Mean next-token NLL over ``texts`` (each followed by EOS): the pretraining term of PPO-ptx
    (Ouyang et al. 2022, eq. 2, γ·E_{x∼D_pretrain}[log π(x)])."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 1] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # (N, L)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)  # (N, L) -100: not scored
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(x)] = torch.tensor(x)
    device = next(policy.parameters()).device
    return policy(input_ids=input_ids.to(device), attention_mask=(labels != -100).long().to(device),
                  labels=labels.to(device)).loss


@torch.no_grad()
def _prepare(models: PPOModels, config: PPOConfig, prompts: list[list[dict]], scorer: RewardScorer, kl_coef: float,
             seeds: list[int], accelerator, real: bool) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
    """Sample, score, and compute everything the PPO epochs need on this process's prompts: old log-probs,
    values, advantages (whitened over the whole step's batch). Returns (rollout, tensors, summed figures);
    a padding process (``real`` false) adds nothing to the whitening statistics or the figures."""
    rollout = sample_rollout(
        models.policy, models.tokenizer, prompts, samples_per_prompt=config.samples_per_prompt,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, with_logprobs=False,
        seeds=seeds,
    )
    mask = rollout.response_mask  # (b, T)
    score, parts = scorer.score(prompts, rollout)  # (b,)
    score = score - config.missing_eos_penalty * (~rollout.ended).float()
    logits, old_values = policy_and_values(models, rollout, config.temperature)
    old_logp = token_logprobs(logits, rollout.response_ids) * mask  # (b, T)
    ref_logp = reference_logprobs(models.policy, models.reference, rollout, config.temperature) * mask
    rewards, kl = kl_penalised_rewards(score, old_logp, ref_logp, mask, kl_coef=kl_coef, estimator=config.kl_estimator)
    advantages, returns = gae_advantages(rewards, old_values * mask, mask, gamma=config.gamma, lam=config.lam)
    if config.whiten_advantages:
        if accelerator.num_processes == 1:
            advantages = masked_whiten(advantages, mask)
        else:  # the mean and variance of the whole step's batch
            advantages = masked_whiten(advantages, mask if real else torch.zeros_like(mask),
                                       total=lambda t: distributed.tensor_sum(t, accelerator))
    tensors = {"old_logp": old_logp, "old_values": old_values * mask, "advantages": advantages, "returns": returns}
    w = 1.0 if real else 0.0
    sums = {
        "reward": w * score.sum().item(), "rows": w * score.numel(),
        "kl": w * kl.sum().item(),  # per sequence, nats, once divided by rows
        "entropy": w * (entropy_from_logits(logits) * mask).sum().item(), "tokens": w * mask.sum().item(),
        "eos_rate": w * rollout.ended.float().sum().item(),
        **{name: w * value.sum().item() for name, value in parts.items()},
    }
    return rollout, tensors, sums


ROLLOUT_FIGURES = ("reward", "rows", "kl", "entropy", "tokens", "eos_rate")  # _prepare's sums besides the parts
MINIBATCH_FIGURES = ("policy_loss", "value_loss", "clipped", "approx_kl", "tokens")


def _minibatch_step(trained, config: PPOConfig, rollout: Rollout, tensors, ptx_texts, optimizer, scheduler,
                    accelerator, share: float) -> tuple[dict[str, float], float | None]:
    """One optimizer step on this process's rows of one minibatch.

    ``share`` is this process's count of the minibatch's response tokens (0: it holds none of its rows and runs
    row 0 with its loss × 0); the policy and value losses (token means) are scaled by W·share/Σshare, so DDP's
    average of the gradients is the gradient of the whole minibatch. Returns (token sums of the figures
    ``MINIBATCH_FIGURES``, the ptx loss or None).
    """
    mask = rollout.response_mask
    ptx = ptx_texts if ptx_texts and config.ptx_coef > 0 else None
    logits, values, lm = trained(rollout, config.temperature, ptx, config.max_length)
    logp = token_logprobs(logits, rollout.response_ids)
    policy_loss, ratio = ppo_policy_loss(logp, tensors["old_logp"], tensors["advantages"], mask, clip_eps=config.clip_eps)
    value_loss = ppo_value_loss(values, tensors["old_values"], tensors["returns"], mask, clip_eps=config.value_clip)
    loss = policy_loss + config.vf_coef * value_loss
    if accelerator.num_processes > 1:
        loss = loss * distributed.global_mean_scales(accelerator, pair_weight=share, responses=0)[0]
    if lm is not None:
        loss = loss + config.ptx_coef * lm  # PPO-ptx, Ouyang et al. 2022 eq. 2 (the same texts on every process)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over processes here
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in trained.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        real = mask if share else torch.zeros_like(mask)  # a process without rows adds nothing to the figures
        tokens = real.sum().item()
        figures = {
            "policy_loss": policy_loss.item() * tokens, "value_loss": value_loss.item() * tokens,
            "clipped": (((ratio - 1.0).abs() > config.clip_eps).float() * real).sum().item(),
            "approx_kl": (0.5 * (logp.detach() - tensors["old_logp"]) ** 2 * real).sum().item(), "tokens": tokens,
        }
    return figures, (lm.item() if lm is not None else None)


def _ptx_slice(ptx_texts: list[str] | None, config: PPOConfig, update: int) -> list[str]:
    if not ptx_texts:
        return []
    start = (update * config.ptx_batch_size) % len(ptx_texts)
    return [ptx_texts[(start + i) % len(ptx_texts)] for i in range(min(config.ptx_batch_size, len(ptx_texts)))]


def ppo_step(models: PPOModels, trained, config: PPOConfig, prompts, scorer, kl_ctl, optimizer, scheduler, ptx_texts,
             step: int, accelerator) -> dict[str, float]:
    """One PPO iteration on one batch of prompts (this process's share of them); returns the step's metrics,
    those of the whole batch on every process."""
    G, world = config.samples_per_prompt, accelerator.num_processes
    mine, padding = distributed.shard(range(len(prompts)), rank=accelerator.process_index, world=world)
    rollout, tensors, sums = _prepare(models, config, [prompts[i] for i in mine], scorer, kl_ctl.value,
                                      sample_seeds(config.seed, step, mine), accelerator, real=not padding)
    n = len(prompts) * G  # sequences of the whole step
    mb = config.mini_batch_size or n
    mask = rollout.response_mask
    # Global row p·G + g (prompt position p in the step) -> this process's row; none on a padding process.
    local_of = {} if padding else {p * G + g: j * G + g for j, p in enumerate(mine) for g in range(G)}
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    updates: list[dict[str, float]] = []
    ptx_losses: list[float] = []
    for _ in range(config.ppo_epochs):
        for rows in torch.randperm(n, generator=generator).split(mb):  # the same minibatches on every process
            local = [local_of[r] for r in rows.tolist() if r in local_of]
            index = torch.tensor(local or [0])
            part = {k: v[index.to(v.device)] for k, v in tensors.items()}
            share = mask[index.to(mask.device)].sum().item() if local else 0.0
            ptx = _ptx_slice(ptx_texts, config, step * 1000 + len(updates))
            figures, lm = _minibatch_step(trained, config, rollout.select(index), part, ptx, optimizer, scheduler,
                                          accelerator, share)
            updates.append(figures)
            if lm is not None:
                ptx_losses.append(lm)
    flat = [float(sums[k]) for k in sorted(sums)] + [u[k] for u in updates for k in MINIBATCH_FIGURES]
    if world > 1:
        flat = distributed.sum_over_processes(flat, accelerator)  # the whole step's figures, on every process
    head, k = len(sums), len(MINIBATCH_FIGURES)
    sums = dict(zip(sorted(sums), flat[:head]))
    per_update = [dict(zip(MINIBATCH_FIGURES, flat[head + i * k : head + (i + 1) * k])) for i in range(len(updates))]
    rows, tokens = max(sums["rows"], 1.0), max(sums["tokens"], 1.0)
    stats = {
        "reward": sums["reward"] / rows, "kl": sums["kl"] / rows, "entropy": sums["entropy"] / tokens,
        "response_length": sums["tokens"] / rows, "eos_rate": sums["eos_rate"] / rows,
        **{name: sums[name] / rows for name in sums if name not in ROLLOUT_FIGURES},  # the scorer's parts
    }
    for key, name in (("policy_loss", "policy_loss"), ("value_loss", "value_loss"), ("clipped", "clip_fraction"),
                      ("approx_kl", "approx_kl")):  # each minibatch's token mean, averaged over minibatches
        stats[name] = sum(u[key] / max(u["tokens"], 1.0) for u in per_update) / len(per_update)
    if ptx_losses:
        stats["ptx_loss"] = sum(ptx_losses) / len(ptx_losses)
    stats["kl_coef"] = kl_ctl.value
    kl_ctl.update(stats["kl"], n)  # the whole batch's KL: the same β on every process
    return stats


def total_steps(config: PPOConfig, n_prompts: int) -> int:
    return config.max_steps or max(1, math.ceil(config.epochs * n_prompts / config.batch_size))


def train_ppo(
    config: PPOConfig, prompts: list[list[dict]], *, policy_dir: str, output_dir: str,
    reward_fn: RewardFn | None = None, reward_model_dir: str | None = None, hooks: TrainHooks | None = None,
    resume: bool = True, ptx_texts: list[str] | None = None, health_watch: HealthWatch | None = None,
) -> dict:
    """Train the policy in ``policy_dir`` with PPO; save it to ``output_dir/policy``; return the summary.

    ``reward_model_dir`` defaults to the config's ``reward_model``; ``reward_fn`` is the callable (the config's
    ``reward_fn`` is only the name of the operator's hook, which the caller resolves). Checkpoints go
    to ``output_dir/checkpoints`` every ``checkpoint_every`` steps; with ``resume`` the newest one is loaded.
    ``hooks.should_stop()`` is checked after every step: a stopped run checkpoints and returns early.
    ``health_watch``: the in-run health check every ``config.health_every`` steps (``training.ml.health_watch``).
    """
    hooks = hooks or NullHooks()
    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    if config.ptx_coef > 0 and not ptx_texts:
        raise ValueError("ptx_coef > 0 needs ptx_texts (the text for PPO-ptx's language-modelling loss)")
    config.validate()
    accelerator = distributed.make_accelerator()  # one process: plain placement; several: DDP, NCCL (CUDA) or gloo
    main = accelerator.is_main_process
    hooks = hooks if main else NullHooks()
    torch.set_num_threads(distributed.threads_per_process(config.num_threads, accelerator.num_processes))
    device = accelerator.device
    precision = resolve_mixed_precision(config.mixed_precision, device)
    torch.manual_seed(config.seed)
    reward_model_dir = reward_model_dir or config.reward_model or None
    if reward_fn is None and config.reward_fn:
        raise reward_fn_unresolved(config.reward_fn)
    scorer = RewardScorer(reward_model_dir=reward_model_dir, reward_fn=reward_fn, max_length=config.max_length,
                          device=device)
    models = load_ppo_models(policy_dir, config, reward_model_dir, device)
    enable_gradient_checkpointing(models.policy, config.gradient_checkpointing)
    total = total_steps(config, len(prompts))
    per_step = config.ppo_epochs * math.ceil(config.batch_size * config.samples_per_prompt / (config.mini_batch_size or 10**9))
    optimizer = torch.optim.AdamW(models.trainable(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total * per_step),
                              num_training_steps=total * per_step)
    kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon) if config.adaptive_kl
              else FixedKLController(config.kl_coef))
    out = Path(output_dir)
    start, extra = checkpoint_resume(out / "checkpoints", model=models.policy, optimizer=optimizer,
                                     scheduler=scheduler, log=hooks.log, resume=resume, total=total)
    if extra:
        kl_ctl.value = float(extra["kl_coef"])
        models.load_value_state(extra["value"])
    trained = distributed.wrap(PolicyValue(models), accelerator)  # after the resume: DDP starts from main's weights
    health = InRunHealth.start(health_watch, config, out, hooks, main=main, resume_step=start)

    def save_checkpoint(step: int) -> None:
        if main:
            checkpoint_save(root=out / "checkpoints", step=step, model=models.policy, optimizer=optimizer,
                            scheduler=scheduler, extra={"kl_coef": kl_ctl.value, "value": models.value_state()},
                            keep=config.keep_checkpoints)

    def one_step(batch: list[list[dict]], step: int) -> dict[str, float]:
        with autocast(precision, device):  # bf16 forward passes; losses are computed in fp32 (.float() on logits)
            metrics = ppo_step(models, trained, config, batch, scorer, kl_ctl, optimizer, scheduler, ptx_texts, step,
                               accelerator)
        return {**metrics, **health.at_step(step + 1, total, models.policy, models.tokenizer)}

    history, step, stopped = rl_steps(prompts, config, start=start, total=total, step_fn=one_step, hooks=hooks,
                                      save_checkpoint=save_checkpoint, accelerator=accelerator)
    if not stopped and main:
        models.policy.save_pretrained(out / "policy")
        models.tokenizer.save_pretrained(out / "policy")
    accelerator.wait_for_everyone()  # no process returns before the policy is on disk
    return {**run_summary(history, step, total, stopped, out), "processes": accelerator.num_processes,
            **health.summary()}


def rl_steps(prompts, config, *, start: int, total: int, step_fn, hooks: TrainHooks, save_checkpoint, accelerator=None):
    """The outer loop PPO and GRPO share: a deterministic prompt batch and sampling seed per step (so a resumed
    run repeats exactly what the uninterrupted one would do), hooks, periodic checkpoints, stop on request
    (the main process's answer, shared with the others when ``accelerator`` runs several).
    Returns (per-step metrics, steps done, stopped)."""
    history: list[dict[str, float]] = []
    step, stopped = start, False
    while step < total:
        batch = [prompts[i] for i in prompt_batch(len(prompts), step=step, batch_size=config.batch_size, seed=config.seed)]
        torch.manual_seed(config.seed * 1_000_003 + step)  # sampling of step s is the same after a resume
        metrics = step_fn(batch, step)
        step += 1
        history.append(metrics)
        hooks.on_step(step, total, metrics)
        if step % config.checkpoint_every == 0 and step < total:
            save_checkpoint(step)
        stop = hooks.should_stop()
        if distributed.any_process(stop, accelerator) if accelerator is not None else stop:
            save_checkpoint(step)
            stopped = True
            break
    return history, step, stopped


def run_summary(history: list[dict[str, float]], step: int, total: int, stopped: bool, out: Path) -> dict:
    """What a trainer returns: steps done, whether it was stopped, where the policy is, first/last metrics."""
    last = history[-1] if history else {}
    first = history[0] if history else {}
    return {
        "steps": step, "total_steps": total, "stopped": stopped,
        "policy_dir": None if stopped else str(out / "policy"),
        "final": last, "first": first,
    }
