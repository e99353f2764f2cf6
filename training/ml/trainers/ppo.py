"""PPO against a reward model and/or reward function, with a per-token KL penalty (InstructGPT), and PPO-ptx.

One step: sample ``batch_size`` prompts × ``samples_per_prompt`` responses from the policy → score them →
per-token reward −β·KL(π‖π_ref) plus the score on the last token → GAE advantages → ``ppo_epochs`` passes of
clipped policy + value losses over minibatches (plus γ × LM loss on ptx texts) → adapt β.
The critic is a linear value head on the policy's last hidden state, or a separate model initialised from
the reward model (same tokenizer required). No Django here; progress goes through ``hooks``.
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
    AdaptiveKLController, FixedKLController, clip_fraction, entropy_from_logits, gae_advantages,
    kl_penalised_rewards, masked_mean, masked_whiten,
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
def _prepare(models: PPOModels, config: PPOConfig, prompts: list[list[dict]], scorer: RewardScorer,
             kl_coef: float) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
    """Sample, score, and compute everything the PPO epochs need: old log-probs, values, advantages."""
    rollout = sample_rollout(
        models.policy, models.tokenizer, prompts, samples_per_prompt=config.samples_per_prompt,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, with_logprobs=False,
    )
    mask = rollout.response_mask  # (B, T)
    score, parts = scorer.score(prompts, rollout)  # (B,)
    score = score - config.missing_eos_penalty * (~rollout.ended).float()
    logits, old_values = policy_and_values(models, rollout, config.temperature)
    old_logp = token_logprobs(logits, rollout.response_ids) * mask  # (B, T)
    ref_logp = reference_logprobs(models.policy, models.reference, rollout, config.temperature) * mask
    rewards, kl = kl_penalised_rewards(score, old_logp, ref_logp, mask, kl_coef=kl_coef, estimator=config.kl_estimator)
    advantages, returns = gae_advantages(rewards, old_values * mask, mask, gamma=config.gamma, lam=config.lam)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    tensors = {"old_logp": old_logp, "old_values": old_values * mask, "advantages": advantages, "returns": returns}
    stats = {
        "reward": score.mean().item(),
        "kl": kl.sum(1).mean().item(),  # per sequence, nats
        "entropy": masked_mean(entropy_from_logits(logits), mask).item(),
        "response_length": mask.sum(1).mean().item(),
        "eos_rate": rollout.ended.float().mean().item(),
        **{name: value.mean().item() for name, value in parts.items()},
    }
    return rollout, tensors, stats


def _minibatch_step(models, config, rollout, tensors, ptx_texts, optimizer, scheduler) -> dict[str, float]:
    mask = rollout.response_mask
    logits, values = policy_and_values(models, rollout, config.temperature)
    logp = token_logprobs(logits, rollout.response_ids)
    policy_loss, ratio = ppo_policy_loss(logp, tensors["old_logp"], tensors["advantages"], mask, clip_eps=config.clip_eps)
    value_loss = ppo_value_loss(values, tensors["old_values"], tensors["returns"], mask, clip_eps=config.value_clip)
    loss = policy_loss + config.vf_coef * value_loss
    stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
             "clip_fraction": clip_fraction(ratio, mask, config.clip_eps).item(),
             "approx_kl": masked_mean(0.5 * (logp.detach() - tensors["old_logp"]) ** 2, mask).item()}
    if ptx_texts and config.ptx_coef > 0:
        lm = ptx_loss(models.policy, models.tokenizer, ptx_texts, config.max_length)
        loss = loss + config.ptx_coef * lm  # PPO-ptx, Ouyang et al. 2022 eq. 2
        stats["ptx_loss"] = lm.item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(models.trainable(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    return stats


def _ptx_slice(ptx_texts: list[str] | None, config: PPOConfig, update: int) -> list[str]:
    if not ptx_texts:
        return []
    start = (update * config.ptx_batch_size) % len(ptx_texts)
    return [ptx_texts[(start + i) % len(ptx_texts)] for i in range(min(config.ptx_batch_size, len(ptx_texts)))]


def ppo_step(models, config, prompts, scorer, kl_ctl, optimizer, scheduler, ptx_texts, step) -> dict[str, float]:
    """One PPO iteration on one batch of prompts; returns its metrics."""
    rollout, tensors, stats = _prepare(models, config, prompts, scorer, kl_ctl.value)
    n = len(rollout.texts)
    mb = config.mini_batch_size or n
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    updates: list[dict[str, float]] = []
    for _ in range(config.ppo_epochs):
        for rows in torch.randperm(n, generator=generator).split(mb):
            part = {k: v[rows] for k, v in tensors.items()}
            ptx = _ptx_slice(ptx_texts, config, step * 1000 + len(updates))
            updates.append(_minibatch_step(models, config, rollout.select(rows), part, ptx, optimizer, scheduler))
    for key in updates[0]:
        stats[key] = sum(u[key] for u in updates) / len(updates)
    stats["kl_coef"] = kl_ctl.value
    kl_ctl.update(stats["kl"], n)
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
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # one process, one device
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
    health = InRunHealth.start(health_watch, config, out, hooks, resume_step=start)

    def save_checkpoint(step: int) -> None:
        checkpoint_save(root=out / "checkpoints", step=step, model=models.policy, optimizer=optimizer,
                        scheduler=scheduler, extra={"kl_coef": kl_ctl.value, "value": models.value_state()},
                        keep=config.keep_checkpoints)

    def one_step(batch: list[list[dict]], step: int) -> dict[str, float]:
        with autocast(precision, device):  # bf16 forward passes; losses are computed in fp32 (.float() on logits)
            metrics = ppo_step(models, config, batch, scorer, kl_ctl, optimizer, scheduler, ptx_texts, step)
        return {**metrics, **health.at_step(step + 1, total, models.policy, models.tokenizer)}

    history, step, stopped = rl_steps(prompts, config, start=start, total=total, step_fn=one_step, hooks=hooks,
                                      save_checkpoint=save_checkpoint)
    if not stopped:
        models.policy.save_pretrained(out / "policy")
        models.tokenizer.save_pretrained(out / "policy")
    return {**run_summary(history, step, total, stopped, out), **health.summary()}


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
