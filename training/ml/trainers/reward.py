"""Bradley-Terry reward model on ranked groups: the InstructGPT recipe, one forward per response.

A batch is B prompts; each prompt brings its K responses (B·K sequences, one forward each) and every pair
of every ranking of them, all scored from those K rewards: C(K,2) comparisons for K forwards instead of
2·C(K,2) for shuffled pairs. Reads top to bottom: load -> encode -> loop (step, eval, checkpoint, cancel)
-> save. No Django here: the caller passes plain RankedGroups and a TrainHooks.

Several devices: started under ``accelerate launch`` (``training.ml.distributed``), every process holds the
model (DDP), scores its share of each step's prompts, and scales its loss so the synced gradient is the one
of the whole batch; only the main process reports to the hooks and writes checkpoints and the model. One
process takes exactly the single-device path: no wrapper, no collective, no extra work per step. An FSDP
accelerate config shards the parameters too (``training.ml.sharding``; full model, no LoRA): checkpoints and the
model are then full state dicts gathered by all processes and written by the main one.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

from training.ml import distributed, losses, prefix_sharing, sharding
from training.ml.checkpoint import atomic_save_dir, checkpoint_resume, checkpoint_save
from training.ml.collators import RankedGroupCollator
from training.ml.config import RewardConfig, loading
from training.ml.data import EncodedGroup, encode_groups
from training.ml.precision import autocast, enable_gradient_checkpointing, resolve_mixed_precision
from training.ml.types import NullHooks, RankedGroup, TrainHooks


def load_reward_model(config: RewardConfig, hooks: TrainHooks):
    """(tokenizer, model) from config.base_model: one scalar output, a pad token, optional LoRA."""
    with loading("base_model"):
        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:  # the score is read at the last non-pad token, so padding must be known
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        hooks.log(f"tokenizer has no pad token; padding with {tokenizer.pad_token!r}")
    torch.manual_seed(config.seed)  # a fresh score head is initialised from this seed
    with loading("base_model"):
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
        with loading("lora_target_modules", config.lora_target_modules or "all-linear"):
            model = get_peft_model(model, lora)
        model.peft_config["default"].base_model_name_or_path = config.base_model
    return tokenizer, model


def score(model, batch: dict[str, torch.Tensor], device: torch.device, precision: str = "auto") -> torch.Tensor:
    """One scalar reward per response: (N, T) token ids, or packed groups (prefix sharing) -> (N,).
    ``precision``: config.mixed_precision."""
    with autocast(resolve_mixed_precision(precision, device), device):
        if "readout" in batch:  # one row per prompt: [prompt, reply_1, …, reply_K]
            return prefix_sharing.packed_rewards(model, batch, device).float()  # (N,)
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, 1)
    return logits.squeeze(-1).float()  # (N,)


def use_prefix_sharing(model, config: RewardConfig, groups: list[EncodedGroup], pad_token_id: int, device,
                       hooks: TrainHooks, sharded: bool = False) -> bool:
    """config.share_prefix, if the model gives the unshared rewards with it on a few groups (else log why not)."""
    if not config.share_prefix:
        return False
    if sharded:  # the rewards are read from the head by a forward hook, not from the model's output, so the
        # sharded root would not be gathered again for their backward
        hooks.log("prefix sharing off: not with sharded parameters (FSDP)")
        return False
    if prefix_sharing.score_head(model) is None:
        hooks.log(f"prefix sharing off: {type(model).__name__} has no per-token score head (not a decoder)")
        return False
    error = prefix_sharing.sharing_error(model, [g.input_ids for g in groups[:4]], pad_token_id, device)
    if not error <= 1e-3:  # float32 summation order gives ~1e-6; a model that cannot share gives O(reward)
        hooks.log(f"prefix sharing off: rewards differ from the unshared ones by {error:.3g} on this model")
        return False
    return True


def reward_loss(
    rewards: torch.Tensor, batch: dict[str, torch.Tensor], config: RewardConfig, *,
    pair_scale: float = 1.0, reward_scale: float = 1.0,
) -> dict:
    """Loss and metrics of one batch from its (N,) rewards and the pair indices of the collator.

    ``pair_scale``/``reward_scale`` weigh the pair mean and the per-response centering mean: 1 on one
    process, this process's share of the global means under data parallelism (``distributed.global_mean_scales``).
    """
    device = rewards.device
    chosen = rewards[batch["chosen"].to(device)]  # (P,)
    rejected = rewards[batch["rejected"].to(device)]  # (P,)
    margins = batch["margins"].to(device) * config.margin_coef if config.margin_coef else None
    loss = losses.bradley_terry_loss(chosen, rejected, margins=margins, weights=batch["weights"].to(device))
    if pair_scale != 1.0:
        loss = loss * pair_scale
    if config.center_coef:
        loss = loss + reward_scale * config.center_coef * losses.reward_centering_loss(rewards)
    return {
        "loss": loss,
        "accuracy": losses.pairwise_accuracy(chosen, rejected).item(),
        "margin": losses.mean_margin(chosen, rejected).item(),
        "pairs": int(chosen.numel()),
    }


@torch.no_grad()
def evaluate(
    model, groups: list[EncodedGroup], collate, device, batch_size: int, accelerator: Accelerator | None = None,
    precision: str = "auto", sharded: bool = False,
) -> dict[str, float]:
    """Held-out pairwise accuracy, unweighted Bradley-Terry loss and mean margin over every pair.

    With an accelerator of several processes, each scores every W-th group with the bare model (no DDP
    collective) and the sums are added up, so every process returns the figures of the whole held-out set
    (sharded, all run as many forwards: ``sharding.even_batches``).
    """
    if not groups:
        return {}
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    was_training = model.training
    model.eval()
    loss_sum, correct, margin_sum, pairs = 0.0, 0.0, 0.0, 0
    for start, counted in sharding.even_batches(len(groups), batch_size, rank=rank, world=world, sharded=sharded):
        batch = collate(groups[start:start + batch_size])
        rewards = score(model, batch, device, precision)  # (N,)
        chosen, rejected = rewards[batch["chosen"].to(device)], rewards[batch["rejected"].to(device)]  # (P,), (P,)
        n = int(chosen.numel()) if counted else 0
        if n:
            loss_sum += losses.bradley_terry_loss(chosen, rejected).item() * n
            correct += losses.pairwise_accuracy(chosen, rejected).item() * n
            margin_sum += losses.mean_margin(chosen, rejected).item() * n
            pairs += n
    model.train(was_training)
    if accelerator is not None:
        loss_sum, correct, margin_sum, pairs = distributed.sum_over_processes([loss_sum, correct, margin_sum, pairs], accelerator)
    pairs = int(pairs)
    return {
        "loss": loss_sum / max(pairs, 1),
        "accuracy": correct / max(pairs, 1),
        "margin": margin_sum / max(pairs, 1),
        "pairs": pairs,
    }


def _pairs_per_prompt(counts: dict) -> float:
    return counts["pairs"] / max(counts["groups"], 1)


def effective_learning_rate(config: RewardConfig, train_counts: dict) -> float:
    """config.learning_rate, divided by √(mean pairs per prompt) when config.group_lr_scaling is on.

    A step's loss is the mean over B prompts' C(K,2) pairs, but the pairs of one prompt share its K rewards: the
    step's gradient is as noisy as far fewer independent pairs (measured: about K−1 per prompt, i.e. 1.7× the
    noise of as many random pairs at K=4 and 2.8–3.7× at K=8; docs/reward_model.md). Adam's step does not shrink
    with the noise, so a learning rate from per-pair recipes (TRL's batches of independent pairs) is too hot for
    it; the square-root scaling rule for Adam (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms") scales the lr with √(effective batch). This counts each prompt as one sample, the upper
    bound of that noise (÷ √C(K,2); matching the measured noise alone would give ÷ √(K/2)), the variant that
    learned fastest on the tuning seeds. One pair per prompt (K = 2) is left as it is.
    """
    if not config.group_lr_scaling:
        return config.learning_rate
    return config.learning_rate / math.sqrt(max(_pairs_per_prompt(train_counts), 1.0))


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
    Under ``accelerate launch`` every process calls this with the same arguments; only the main one
    calls ``hooks`` and writes files, and all of them return the same summary.
    """
    config.validate()
    output_dir = Path(output_dir)
    accelerator = distributed.make_accelerator(shards=True)  # one process: plain placement; several: DDP (or FSDP
    sharded = sharding.is_sharded(accelerator)  # with an FSDP config) over NCCL (CUDA) or gloo (CPU)
    if sharded:
        sharding.refuse_unsupported(config, lora=False)
    main = accelerator.is_main_process
    hooks = hooks if main else NullHooks()  # cancel is asked of the main process only, then shared
    torch.set_num_threads(distributed.threads_per_process(config.num_threads, accelerator.num_processes))
    device = accelerator.device
    resolve_mixed_precision(config.mixed_precision, device)  # bf16 on a GPU without it: refused before any work
    tokenizer, model = load_reward_model(config, hooks)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    model = distributed.place(model, accelerator).train()  # sharded: each process keeps its shard
    max_length = min(config.max_length, getattr(model.config, "max_position_embeddings", None) or config.max_length)
    train_data, train_counts = encode_groups(
        tokenizer, train, max_length=max_length, use_weights=config.use_ranking_weights
    )
    eval_data, eval_counts = encode_groups(tokenizer, eval, max_length=max_length)
    if not train_data:
        raise ValueError("no training pairs: every training group is empty or fully tied")
    _log_data(hooks, train_counts, eval_counts, max_length)

    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)  # a step is batch_size prompts over all processes
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Optimizer and scheduler stay plain torch: every process steps them on the same synced gradients.
    learning_rate = effective_learning_rate(config, train_counts)
    if learning_rate != config.learning_rate:
        hooks.log(f"learning rate {learning_rate:.3g}: {config.learning_rate:g} / √{_pairs_per_prompt(train_counts):.3g} "
                  f"pairs per prompt (group_lr_scaling)")
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=round(config.warmup_ratio * total), num_training_steps=total
    )
    sharing = use_prefix_sharing(model, config, train_data, tokenizer.pad_token_id, device, hooks, sharded)
    collate = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id, share_prefix=sharing)
    checkpoints = output_dir / "checkpoints"


    def save_checkpoint(at_step: int) -> None:
        full = sharding.full_states(model, optimizer) if sharded else {}  # every process gathers, the main one writes
        if main:
            checkpoint_save(root=checkpoints, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
                            keep=config.keep_checkpoints, **full)

    step, _ = checkpoint_resume(checkpoints, model=model, optimizer=optimizer, scheduler=scheduler, log=hooks.log,
                                resume=resume, total=total, sharded=sharded)  # every process: the same files
    last_saved = step if step else -1
    if not step:
        torch.manual_seed(config.seed + accelerator.process_index)  # dropout and anything else random in the loop
    trained = distributed.wrap(model, accelerator)  # (DDP) forward/backward; sharded: the model itself

    train_seconds, pairs_seen, last_eval = 0.0, 0, {}
    while step < total:
        if distributed.any_process(hooks.should_stop(), accelerator):
            if last_saved != step:
                save_checkpoint(step)
            hooks.log(f"stopped at step {step} of {total}; checkpoint kept")
            accelerator.wait_for_everyone()
            return _summary(config, step, total, train_counts, eval_counts, last_eval, stopped=True)
        started = time.perf_counter()
        indices = batch_indices(step, len(train_data), config.batch_size, config.seed)
        out = _train_step(trained, [train_data[i] for i in indices], collate, config, accelerator, optimizer, trainable)
        scheduler.step()
        step += 1
        train_seconds += time.perf_counter() - started
        pairs_seen += out["pairs"]
        hooks.on_step(step, total, {**out, "lr": scheduler.get_last_lr()[0], "epoch": step / steps_per_epoch})
        if eval_data and (step % config.eval_every == 0 or step == total):
            last_eval = evaluate(model, eval_data, collate, device, config.batch_size, accelerator, config.mixed_precision,
                                 sharded)
            hooks.on_eval(step, last_eval)
        if step % config.checkpoint_every == 0 and step < total:
            save_checkpoint(step)
            last_saved = step

    if eval_data and not last_eval:  # resumed at the very end: evaluate what is saved
        last_eval = evaluate(model, eval_data, collate, device, config.batch_size, accelerator, config.mixed_precision,
                             sharded)
        hooks.on_eval(step, last_eval)
    model_dir = output_dir / "model"
    weights = sharding.full_model_state(model) if sharded else None  # every process gathers, the main one writes
    if main:
        save_model(model, tokenizer, model_dir, state_dict=weights)
    summary = _summary(config, step, total, train_counts, eval_counts, last_eval, stopped=False)
    summary.update(
        model_dir=str(model_dir),
        train_seconds=round(train_seconds, 3),
        pairs_per_second=round(pairs_seen / train_seconds, 2) if train_seconds else None,
        processes=accelerator.num_processes,
        sharded=sharded,
        prefix_sharing=sharing,
        learning_rate=learning_rate,
    )
    if main:
        atomic_save_dir(output_dir / "summary", lambda tmp: (tmp / "summary.json").write_text(json.dumps(summary, indent=2)))
    hooks.log(f"saved {'adapter' if summary['is_adapter'] else 'model'} to {model_dir}")
    accelerator.wait_for_everyone()  # no process returns before the model is on disk
    return summary


def _train_step(model, groups: list[EncodedGroup], collate, config: RewardConfig, accelerator: Accelerator,
                optimizer, trainable) -> dict:
    """One optimizer step on one step's groups (this process's share of them under data parallelism)."""
    device, world = accelerator.device, accelerator.num_processes
    scales = {}
    if world > 1:
        mine, padding = distributed.shard(range(len(groups)), rank=accelerator.process_index, world=world)
        groups = [groups[i] for i in mine]
    batch = collate(groups)
    if world > 1:  # weigh this process's means by its share of the step's pairs and responses
        pair_weight = 0.0 if padding else batch["weights"].sum().item()
        responses = 0 if padding else len(batch["readout"] if "readout" in batch else batch["input_ids"])
        pair_scale, reward_scale = distributed.global_mean_scales(accelerator, pair_weight=pair_weight, responses=responses)
        scales = {"pair_scale": pair_scale, "reward_scale": reward_scale}
    out = reward_loss(score(model, batch, device, config.mixed_precision), batch, config, **scales)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()  # DDP averages the gradients over processes here
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    optimizer.step()
    if world == 1:
        return {**out, "loss": out["loss"].item()}
    pairs = 0 if padding else out["pairs"]  # metrics of the whole step, the same on every process
    loss, correct, margin, pairs = distributed.sum_over_processes(
        [out["loss"].item(), out["accuracy"] * pairs, out["margin"] * pairs, pairs], accelerator
    )
    return {"loss": loss / world, "accuracy": correct / max(pairs, 1), "margin": margin / max(pairs, 1), "pairs": int(pairs)}


def save_model(model, tokenizer, target: Path, state_dict: dict | None = None) -> Path:
    """save_pretrained the model (or only its LoRA adapter) and the tokenizer, atomically. ``state_dict``: the
    full weights gathered from a sharded model (``sharding.full_model_state``)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
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
