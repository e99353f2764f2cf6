"""Bradley-Terry reward model on ranked groups: the InstructGPT recipe, one forward per response.

A batch is B prompts; each prompt brings its K responses (B·K sequences, one forward each) and every pair
of every ranking of them, all scored from those K rewards: C(K,2) comparisons for K forwards instead of
2·C(K,2) for shuffled pairs. Reads top to bottom: load -> encode -> loop (step, eval, checkpoint, cancel)
-> save. No Django here: the caller passes plain RankedGroups and a TrainHooks.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

from training.ml import losses
from training.ml.checkpoint import atomic_save_dir, checkpoint_latest, checkpoint_load, checkpoint_save
from training.ml.collators import RankedGroupCollator
from training.ml.config import RewardConfig
from training.ml.data import EncodedGroup, encode_groups
from training.ml.types import RankedGroup, TrainHooks


def load_reward_model(config: RewardConfig, hooks: TrainHooks):
    """(tokenizer, model) from config.base_model: one scalar output, a pad token, optional LoRA."""
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:  # the score is read at the last non-pad token, so padding must be known
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        hooks.log(f"tokenizer has no pad token; padding with {tokenizer.pad_token!r}")
    torch.manual_seed(config.seed)  # a fresh score head is initialised from this seed
    model = AutoModelForSequenceClassification.from_pretrained(config.base_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if config.lora_r:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,  # also trains and saves the new score head (modules_to_save)
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules or "all-linear",
        )
        model = get_peft_model(model, lora)
        model.peft_config["default"].base_model_name_or_path = config.base_model
    return tokenizer, model


def score(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """One scalar reward per sequence: (N, T) token ids -> (N,)."""
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    with autocast:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, 1)
    return logits.squeeze(-1).float()  # (N,)


def reward_loss(rewards: torch.Tensor, batch: dict[str, torch.Tensor], config: RewardConfig) -> dict:
    """Loss and metrics of one batch from its (N,) rewards and the pair indices of the collator."""
    device = rewards.device
    chosen = rewards[batch["chosen"].to(device)]  # (P,)
    rejected = rewards[batch["rejected"].to(device)]  # (P,)
    margins = batch["margins"].to(device) * config.margin_coef if config.margin_coef else None
    loss = losses.bradley_terry_loss(chosen, rejected, margins=margins, weights=batch["weights"].to(device))
    if config.center_coef:
        loss = loss + config.center_coef * losses.reward_centering_loss(rewards)
    return {
        "loss": loss,
        "accuracy": losses.pairwise_accuracy(chosen, rejected).item(),
        "margin": losses.mean_margin(chosen, rejected).item(),
        "pairs": int(chosen.numel()),
    }


@torch.no_grad()
def evaluate(model, groups: list[EncodedGroup], collate, device, batch_size: int) -> dict[str, float]:
    """Held-out pairwise accuracy, unweighted Bradley-Terry loss and mean margin over every pair."""
    if not groups:
        return {}
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(groups), batch_size):
        batch = collate(groups[start:start + batch_size])
        rewards = score(model, batch, device)  # (N,)
        chosen.append(rewards[batch["chosen"].to(device)])
        rejected.append(rewards[batch["rejected"].to(device)])
    model.train(was_training)
    chosen_all, rejected_all = torch.cat(chosen), torch.cat(rejected)  # (P,), (P,)
    return {
        "loss": losses.bradley_terry_loss(chosen_all, rejected_all).item(),
        "accuracy": losses.pairwise_accuracy(chosen_all, rejected_all).item(),
        "margin": losses.mean_margin(chosen_all, rejected_all).item(),
        "pairs": int(chosen_all.numel()),
    }


def batch_indices(step: int, num_groups: int, batch_size: int, seed: int) -> list[int]:
    """The groups of optimizer step ``step`` (0-based): a fresh permutation per epoch from seed + epoch.

    A pure function of the step, so a resumed run sees exactly the batches the interrupted one would have.
    """
    steps_per_epoch = math.ceil(num_groups / batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(num_groups, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def train_reward_model(
    config: RewardConfig,
    train: list[RankedGroup],
    eval: list[RankedGroup],
    *,
    output_dir: Path,
    hooks: TrainHooks,
    resume: bool = True,
) -> dict:
    """Train, evaluate, checkpoint and save a reward model; return the run summary.

    Writes ``output_dir/checkpoints/step-N/`` every config.checkpoint_every steps and, at the end,
    ``output_dir/model/`` (save_pretrained: full model, or LoRA adapter whose base is config.base_model)
    with the tokenizer. If hooks.should_stop() turns true, saves a checkpoint and returns
    ``{"stopped": True, ...}``; calling again with resume=True continues from the latest checkpoint.
    """
    config.validate()
    output_dir = Path(output_dir)
    torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_reward_model(config, hooks)
    model.to(device).train()
    max_length = min(config.max_length, getattr(model.config, "max_position_embeddings", None) or config.max_length)
    train_data, train_counts = encode_groups(
        tokenizer, train, max_length=max_length, use_weights=config.use_ranking_weights
    )
    eval_data, eval_counts = encode_groups(tokenizer, eval, max_length=max_length)
    if not train_data:
        raise ValueError("no training pairs: every training group is empty or fully tied")
    _log_data(hooks, train_counts, eval_counts, max_length)

    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=round(config.warmup_ratio * total), num_training_steps=total
    )
    collate = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id)
    checkpoints = output_dir / "checkpoints"

    def save_checkpoint(at_step: int) -> None:
        checkpoint_save(
            root=checkpoints, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            keep=config.keep_checkpoints,
        )

    step, last_saved = 0, -1
    latest = checkpoint_latest(checkpoints) if resume else None
    if latest is not None:
        step = last_saved = checkpoint_load(latest, model=model, optimizer=optimizer, scheduler=scheduler)["step"]
        hooks.log(f"resumed from {latest.name} (step {step} of {total})")
    else:
        torch.manual_seed(config.seed)  # dropout and anything else random in the loop

    train_seconds, pairs_seen, last_eval = 0.0, 0, {}
    while step < total:
        if hooks.should_stop():
            if last_saved != step:
                save_checkpoint(step)
            hooks.log(f"stopped at step {step} of {total}; checkpoint kept")
            return _summary(config, step, total, train_counts, eval_counts, last_eval, stopped=True)
        started = time.perf_counter()
        batch = collate([train_data[i] for i in batch_indices(step, len(train_data), config.batch_size, config.seed)])
        out = reward_loss(score(model, batch, device), batch, config)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        train_seconds += time.perf_counter() - started
        pairs_seen += out["pairs"]
        metrics = {**out, "loss": out["loss"].item(), "lr": scheduler.get_last_lr()[0], "epoch": step / steps_per_epoch}
        hooks.on_step(step, total, metrics)
        if eval_data and (step % config.eval_every == 0 or step == total):
            last_eval = evaluate(model, eval_data, collate, device, config.batch_size)
            hooks.on_eval(step, last_eval)
        if step % config.checkpoint_every == 0 and step < total:
            save_checkpoint(step)
            last_saved = step

    if eval_data and not last_eval:  # resumed at the very end: evaluate what is saved
        last_eval = evaluate(model, eval_data, collate, device, config.batch_size)
        hooks.on_eval(step, last_eval)
    model_dir = save_model(model, tokenizer, output_dir / "model")
    summary = _summary(config, step, total, train_counts, eval_counts, last_eval, stopped=False)
    summary.update(
        model_dir=str(model_dir),
        train_seconds=round(train_seconds, 3),
        pairs_per_second=round(pairs_seen / train_seconds, 2) if train_seconds else None,
    )
    atomic_save_dir(output_dir / "summary", lambda tmp: (tmp / "summary.json").write_text(json.dumps(summary, indent=2)))
    hooks.log(f"saved {'adapter' if summary['is_adapter'] else 'model'} to {model_dir}")
    return summary


def save_model(model, tokenizer, target: Path) -> Path:
    """save_pretrained the model (or only its LoRA adapter) and the tokenizer, atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_save_dir(target, write)


def _log_data(hooks: TrainHooks, train_counts: dict, eval_counts: dict, max_length: int) -> None:
    hooks.log(
        f"train: {train_counts['groups']} prompts, {train_counts['sequences']} responses, {train_counts['pairs']} pairs;"
        f" held out: {eval_counts['groups']} prompts, {eval_counts['pairs']} pairs"
    )
    for name, counts in (("train", train_counts), ("held-out", eval_counts)):
        if counts["truncated"]:
            hooks.log(f"{name}: {counts['truncated']} sequences longer than {max_length} tokens kept their end")
        if counts["groups_without_pairs"]:
            hooks.log(f"{name}: {counts['groups_without_pairs']} prompts had only ties (no pair) and were skipped")


def _summary(config, step, total, train_counts, eval_counts, last_eval, *, stopped: bool) -> dict:
    return {
        "stopped": stopped,
        "steps": step,
        "total_steps": total,
        "num_pairs": train_counts["pairs"],
        "num_prompts": train_counts["groups"],
        "eval_pairs": eval_counts["pairs"],
        "eval_prompts": eval_counts["groups"],
        "truncated": {"train": train_counts["truncated"], "eval": eval_counts["truncated"]},
        "groups_without_pairs": {"train": train_counts["groups_without_pairs"], "eval": eval_counts["groups_without_pairs"]},
        "final_eval": last_eval,
        "is_adapter": bool(config.lora_r),
        "base_model": config.base_model,
    }
