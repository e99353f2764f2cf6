"""Supervised fine-tuning of a causal LM on demonstrations: loss on the response tokens only.

An example is (prompt messages, response); it is scored as ``[chat prompt][response][EOS]`` exactly as
``training.ml.generation`` scores samples, so the SFT policy is trained on what it will later generate.
Full fine-tuning or LoRA (``lora_r > 0``, peft). Checkpoints via ``training.ml.checkpoint`` (resume picks
up the newest one); ``hooks.should_stop()`` is checked every step. The result is a policy directory
(``output_dir/policy``): a full model, or a LoRA adapter, plus the tokenizer.

Several devices: under ``accelerate launch`` each process takes every W-th example of a step and scales its
token mean so the all-reduced gradient is the whole step's (``training.ml.distributed``); only the main
process reports and writes. An FSDP accelerate config shards the parameters too (``training.ml.sharding``):
checkpoints and the policy are then full state dicts gathered by all processes and written by the main one. The helpers below (loading a trainable policy, the optimizer, batch order,
saving) are shared with DPO. No Django here.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from training.ml import distributed, sharding
from training.ml.checkpoint import atomic_save_dir, checkpoint_resume, checkpoint_save
from training.ml.config import SFTConfig, TrainConfig, loading
from training.ml.generation import collate_scoring, encode_many, token_logprobs
from training.ml.health_watch import HealthWatch, InRunHealth
from training.ml.precision import autocast, enable_gradient_checkpointing, resolve_mixed_precision
from training.ml.types import NullHooks, TrainHooks


# --- helpers shared by the policy trainers (SFT, DPO) ---
def load_trainable_policy(config: TrainConfig, adapter: str = ""):
    """(model, tokenizer) ready to train: ``adapter`` continues a LoRA adapter, ``lora_r > 0`` adds one."""
    with loading("base_model"):
        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model = AutoModelForCausalLM.from_pretrained(config.base_model)
    if adapter:
        from peft import PeftModel

        with loading("adapter"):
            model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    elif config.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
            target_modules=config.lora_target_modules or "all-linear",
        )
        with loading("lora_target_modules", config.lora_target_modules or "all-linear"):
            model = get_peft_model(model, lora)
        model.peft_config["default"].base_model_name_or_path = config.base_model  # the adapter names its base
    return model.train(), tokenizer


def make_optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW on the trainable parameters, with the configured warm-up and decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler if config.lr_scheduler != "constant" else "constant_with_warmup", optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps), num_training_steps=total_steps,
    )
    return optimizer, scheduler


def total_steps_for(config: TrainConfig, n_items: int) -> int:
    per_epoch = max(1, math.ceil(n_items / config.batch_size))
    return config.max_steps or max(1, math.ceil(config.epochs * per_epoch))


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Items of optimizer step ``step``: a fresh seeded shuffle per epoch, so resuming needs no RNG state.

    >>> batch_indices(5, 2, 0, seed=0) + batch_indices(5, 2, 1, seed=0) + batch_indices(5, 2, 2, seed=0)
    [2, 1, 0, 4, 3]
    """
    per_epoch = max(1, math.ceil(n_items / batch_size))
    epoch, position = divmod(step, per_epoch)
    order = list(range(n_items))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[position * batch_size: (position + 1) * batch_size]


def save_policy(model, tokenizer, target: Path, state_dict: dict | None = None) -> Path:
    """Write the policy directory atomically: full weights, or the LoRA adapter, plus the tokenizer.
    ``state_dict``: the full weights gathered from a sharded model (``sharding.full_model_state``)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)

    return atomic_save_dir(Path(target), write)


def policy_summary(model, config: TrainConfig, policy_dir: Path) -> dict:
    is_adapter = hasattr(model, "peft_config")
    return {"policy_dir": str(policy_dir), "is_adapter": is_adapter, "base_model": config.base_model}


# --- SFT ---
def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(round(len(examples) * fraction), len(examples) - 1) if fraction > 0 else 0
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def _nll(model, encoded: list, pad_id: int, precision: str = "no") -> tuple[torch.Tensor, float]:
    """(mean negative log-likelihood per response token of a batch (scalar, with grad), response tokens)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_scoring(encoded, pad_id).items()}
    tokens = batch["response_mask"].sum()
    with autocast(precision, device):
        logp = token_logprobs(model, batch)  # (B, L-1), fp32
    return -logp.sum() / tokens.clamp(min=1), float(tokens.item())


def _eval_loss(model, encoded: list, pad_id: int, batch_size: int = 64, accelerator=None, precision: str = "no",
               sharded: bool = False) -> float:
    """Held-out NLL per response token; several processes take every W-th batch and add up their sums
    (sharded, all run as many forwards: ``sharding.even_batches``)."""
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    model.eval()
    loss_sum, tokens = 0.0, 0.0
    with torch.no_grad():
        for start, counted in sharding.even_batches(len(encoded), batch_size, rank=rank, world=world, sharded=sharded):
            loss, n = _nll(model, encoded[start: start + batch_size], pad_id, precision)
            if counted:
                loss_sum, tokens = loss_sum + loss.item() * n, tokens + n
    model.train()
    if world > 1:
        loss_sum, tokens = distributed.sum_over_processes([loss_sum, tokens], accelerator)
    return loss_sum / max(tokens, 1.0)


def _sft_step(trained, batch: list, pad_id: int, config: SFTConfig, accelerator, precision: str, optimizer) -> dict:
    """One optimizer step on this process's share of a step's examples; the loss is the whole step's token mean
    (each process scales its mean by W·tokens_r/tokens, so DDP's averaged gradient is the one-process one)."""
    world = accelerator.num_processes
    padding = False
    if world > 1:
        mine, padding = distributed.shard(range(len(batch)), rank=accelerator.process_index, world=world)
        batch = [batch[i] for i in mine]
    loss, tokens = _nll(trained, batch, pad_id, precision)
    if world > 1:
        loss = loss * distributed.global_mean_scales(accelerator, pair_weight=0.0 if padding else tokens, responses=0)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over processes here (FSDP: reduce-scatters their mean)
    params = [p for p in trained.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
    optimizer.step()
    value = loss.item() if world == 1 else distributed.sum_over_processes([loss.item()], accelerator)[0] / world
    return {"loss": value, "grad_norm": sharding.grad_norm_value(grad_norm)}


def train_sft(
    config: SFTConfig, examples: list[tuple[list[dict], str]], *, output_dir: str | Path, hooks: TrainHooks,
    resume: bool = True, health_watch: HealthWatch | None = None,
) -> dict:
    """Fine-tune ``config.base_model`` on (messages, response) examples; return the summary with policy_dir.

    Under ``accelerate launch`` every process calls this with the same arguments: each takes every W-th
    example of a step, only the main one reports and writes, all return the same summary. ``health_watch``: the
    in-run health check every ``config.health_every`` steps (``training.ml.health_watch``; main process only).
    """
    if not examples:
        raise ValueError("SFT needs at least one (prompt, response) example")
    config.validate()
    accelerator = distributed.make_accelerator(shards=True)
    sharded = sharding.is_sharded(accelerator)  # an FSDP config over several processes
    if sharded:
        sharding.refuse_unsupported(config, health_watch=health_watch)
    main = accelerator.is_main_process
    hooks = hooks if main else NullHooks()
    torch.set_num_threads(distributed.threads_per_process(config.num_threads, accelerator.num_processes))
    precision = resolve_mixed_precision(config.mixed_precision, accelerator.device)
    torch.manual_seed(config.seed)
    output_dir = Path(output_dir)
    model, tokenizer = load_trainable_policy(config)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    model = distributed.place(model, accelerator)  # sharded: each process keeps its shard
    train, held_out = _split(examples, config.eval_fraction, config.seed)
    encode = lambda rows: encode_many(tokenizer, [m for m, _ in rows], [r for _, r in rows], config.max_length)  # noqa: E731
    train_enc, eval_enc = encode(train), encode(held_out)
    total = total_steps_for(config, len(train_enc))
    optimizer, scheduler = make_optimizer(model, config, total)
    checkpoints = output_dir / "checkpoints"

    def save_checkpoint(at_step: int) -> None:
        full = sharding.full_states(model, optimizer) if sharded else {}  # every process gathers, the main one writes
        if main:
            checkpoint_save(root=checkpoints, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
                            keep=config.keep_checkpoints, **full)

    start, _ = checkpoint_resume(checkpoints, model=model, optimizer=optimizer, scheduler=scheduler, log=hooks.log,
                                 resume=resume, sharded=sharded)
    health = InRunHealth.start(health_watch, config, output_dir, hooks, main=main, resume_step=start)
    trained = distributed.wrap(model, accelerator)
    pad_id = tokenizer.pad_token_id
    hooks.log(f"SFT on {len(train_enc)} examples ({len(eval_enc)} held out), {total} steps")
    loss = float("nan")
    for step in range(start, total):
        if distributed.any_process(hooks.should_stop(), accelerator):
            save_checkpoint(step)
            accelerator.wait_for_everyone()
            return {"stopped": True, "steps": step}
        batch = [train_enc[i] for i in batch_indices(len(train_enc), config.batch_size, step, config.seed)]
        out = _sft_step(trained, batch, pad_id, config, accelerator, precision, optimizer)
        scheduler.step()
        loss = out["loss"]
        hooks.on_step(step + 1, total, {**out, "lr": scheduler.get_last_lr()[0],
                                        **health.at_step(step + 1, total, model, tokenizer)})
        if eval_enc and ((step + 1) % config.eval_every == 0 or step + 1 == total):
            hooks.on_eval(step + 1, {"loss": _eval_loss(model, eval_enc, pad_id, accelerator=accelerator,
                                                         precision=precision, sharded=sharded)})
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(step + 1)
    policy_dir = output_dir / "policy"
    weights = sharding.full_model_state(model) if sharded else None  # every process gathers, the main one writes
    if main:
        save_policy(model.eval(), tokenizer, policy_dir, state_dict=weights)
    summary = {"stopped": False, "steps": total, "train_loss": loss, "examples": len(train_enc),
               "processes": accelerator.num_processes, "sharded": sharded}
    if eval_enc:
        summary["eval_loss"] = _eval_loss(model, eval_enc, pad_id, accelerator=accelerator, precision=precision,
                                          sharded=sharded)
    accelerator.wait_for_everyone()  # no process returns before the policy is on disk
    return {**summary, **policy_summary(model, config, policy_dir), **health.summary()}
