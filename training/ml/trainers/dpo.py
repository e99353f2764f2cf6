"""DPO on ranked groups, with the reference log-probabilities stored at generation time.

Direct Preference Optimization (Rafailov et al. 2023) needs log π(y|x) of every chosen and rejected
response under the policy being trained and under the reference. Two savings over pairwise trainers:

* the K responses of a prompt are one batch element: K policy forwards give every pair of every ranking
  of them (C(K,2) pairs per ranking), instead of two forwards per pair;
* the reference is the policy that generated the samples, whose log π_ref(y|x) was stored with each
  sample (``RankedGroup.ref_logprobs``), so there is no reference forward pass. Missing values are
  computed once, before the first update, with the starting policy, and the log says so. With
  ``config.reference_model`` (e.g. round 0's policy: a KL anchor that does not move with the rounds) every
  reference log-prob is scored once with that model instead.

The loss is ``losses.dpo_loss``: DPO, conservative DPO (``label_smoothing``), IPO (``loss_type``) and RPO's NLL
term on the chosen reply (``rpo_alpha``).

Held-out prompts: the ``eval`` groups the caller gives, plus ``config.eval_fraction`` of the training PROMPTS
(``data.split_by_prompt``: no prompt on both sides), scored every ``eval_every`` steps (held-out DPO loss and
implicit-reward accuracy, with the same reference log-probs as training). Early stopping
(``config.early_stopping_patience`` > 0, ``EarlyStopping``): keep the weights of the best held-out accuracy,
stop when ``patience`` evaluations in a row fail to beat it by more than ``early_stopping_min_delta``, and save
the best policy, not the last; its state (best weights included) travels in every checkpoint.

Reads top to bottom: load -> split -> reference log-probs -> encode -> loop (step, eval, early stop, checkpoint,
stop) -> best weights -> save.
The policy is ``config.base_model`` (a full model directory), optionally continuing the LoRA adapter
``config.adapter`` or adding a new one (``lora_r > 0``). Several devices: under ``accelerate launch`` each
process takes every W-th prompt of a step and the gradients are all-reduced (DDP), as in the reward trainer
(``training.ml.distributed``); an FSDP accelerate config shards the parameters too (``training.ml.sharding``).
No Django here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from training.ml import distributed, losses, prefix_sharing, sharding
from training.ml.checkpoint import checkpoint_resume, checkpoint_save
from training.ml.config import ConfigError, DPOConfig, loading
from training.ml.data import split_by_prompt
from training.ml.generation import collate_scoring, encode_many, sequence_logprobs, token_logprobs
from training.ml.health_watch import HealthWatch, InRunHealth
from training.ml.trainers.sft import (
    batch_indices, load_trainable_policy, make_optimizer, policy_summary, save_policy, total_steps_for,
)
from training.ml.precision import autocast, enable_gradient_checkpointing, resolve_mixed_precision
from training.ml.types import NullHooks, RankedGroup, TrainHooks


@dataclass(frozen=True)
class DPOGroup:
    """One prompt's K encoded responses, their reference log-probs and every pair of its rankings."""

    sequences: list[tuple[list[int], list[int]]]  # K (prompt ids, response ids + EOS)
    ref_logprobs: list[float]  # K: log π_ref(y_i | x)
    pairs: list[tuple[int, int, float]]  # (chosen, rejected, weight), indices into sequences
    prompt_id: int | None = None  # the RankedGroup's


def reference_logprobs(model_dir: str, groups: list[RankedGroup], config: DPOConfig) -> list[list[float]]:
    """Every response's log-prob under ``config.reference_model`` (one scoring pass; e.g. round 0's policy)."""
    from training.ml.generation import load_policy

    model, tokenizer = load_policy(model_dir, setting="reference_model")
    values = sequence_logprobs(model, tokenizer, [g.messages for g in groups for _ in g.responses],
                               [r for g in groups for r in g.responses], max_length=config.max_length).tolist()
    out, pos = [], 0
    for g in groups:
        out.append(values[pos: pos + len(g.responses)])
        pos += len(g.responses)
    return out


def fill_ref_logprobs(model, tokenizer, groups: list[RankedGroup], config: DPOConfig, hooks: TrainHooks) -> list[list[float]]:
    """The reference log-prob of every response: under ``config.reference_model`` when set, else the stored
    value, or one computed now with ``model``."""
    if config.reference_model:
        hooks.log(f"reference log-probs of {sum(len(g.responses) for g in groups)} responses from "
                  f"{config.reference_model} (stored values not used)")
        with loading("reference_model", config.reference_model):
            return reference_logprobs(config.reference_model, groups, config)
    missing = [(g, i) for g in groups for i in range(len(g.responses))
               if len(g.ref_logprobs) != len(g.responses) or g.ref_logprobs[i] is None]
    computed: dict[tuple[int, int], float] = {}
    if missing:
        hooks.log(f"{len(missing)} responses have no stored reference log-prob: computing them once with the "
                  f"starting policy {config.base_model}{' + ' + config.adapter if config.adapter else ''}")
        was_training = model.training
        model.eval()
        values = sequence_logprobs(model, tokenizer, [g.messages for g, _ in missing],
                                   [g.responses[i] for g, i in missing], max_length=config.max_length)
        model.train(was_training)
        computed = {(id(g), i): v for (g, i), v in zip(missing, values.tolist())}
    return [[computed[(id(g), i)] if (id(g), i) in computed else float(g.ref_logprobs[i])
             for i in range(len(g.responses))] for g in groups]


def encode_dpo_groups(tokenizer, groups: list[RankedGroup], refs: list[list[float]], config: DPOConfig) -> list[DPOGroup]:
    """Tokenise each group; groups whose rankings give no pair (all tied) are dropped."""
    out = []
    for group, ref in zip(groups, refs, strict=True):
        pairs = [(w, l, (weight if config.use_ranking_weights else 1.0) * (margin if config.margin_weighting else 1))
                 for w, l, margin, weight in group.pairs()]
        if pairs:
            sequences = encode_many(tokenizer, [group.messages] * len(group.responses), group.responses,
                                    config.max_length)
            out.append(DPOGroup(sequences=sequences, ref_logprobs=ref, pairs=pairs, prompt_id=group.prompt_id))
    return out


def dpo_batch(model, groups: list[DPOGroup], config: DPOConfig, pad_id: int, share_prefix: bool = False) -> dict:
    """Loss (with grad) and metrics of a batch: one forward over all Σ K responses, then every pair.

    With ``share_prefix`` a group is one packed row [prompt, response_1, …, response_K] (``prefix_sharing``).
    """
    sequences, ref, chosen, rejected, weights = [], [], [], [], []
    for group in groups:
        offset = len(sequences)
        sequences.extend(group.sequences)
        ref.extend(group.ref_logprobs)
        for w, l, weight in group.pairs:
            chosen.append(offset + w)
            rejected.append(offset + l)
            weights.append(weight)
    device = next(model.parameters()).device
    if share_prefix:
        logp = prefix_sharing.packed_logprobs(model, [g.sequences for g in groups], pad_id, device)  # (N,)
    else:
        batch = {k: v.to(device) for k, v in collate_scoring(sequences, pad_id).items()}
        logp = token_logprobs(model, batch).sum(dim=1)  # (N,) log π(y|x) of each response
    ref_t = torch.tensor(ref, device=device)  # (N,) log π_ref(y|x), stored at generation
    c, r = torch.tensor(chosen, device=device), torch.tensor(rejected, device=device)  # (P,), (P,)
    lengths = torch.tensor([len(response) for _, response in sequences], device=device, dtype=torch.float)  # (N,)
    loss, chosen_rewards, rejected_rewards = losses.dpo_loss(
        logp[c], logp[r], ref_t[c], ref_t[r], beta=config.beta, weights=torch.tensor(weights, device=device),
        label_smoothing=config.label_smoothing, loss_type=config.loss_type, rpo_alpha=config.rpo_alpha,
        chosen_lengths=lengths[c], rejected_lengths=lengths[r],
    )
    return {
        "loss": loss,
        "reward_accuracy": losses.pairwise_accuracy(chosen_rewards, rejected_rewards).item(),
        "chosen_reward": chosen_rewards.mean().item(),
        "rejected_reward": rejected_rewards.mean().item(),
        "margin": losses.mean_margin(chosen_rewards, rejected_rewards).item(),
        "pairs": len(chosen),
    }


@torch.no_grad()
def evaluate(model, groups: list[DPOGroup], config: DPOConfig, pad_id: int, accelerator=None,
             precision: str = "no", share_prefix: bool = False, sharded: bool = False) -> dict[str, float]:
    """Held-out DPO loss, implicit reward accuracy, rewards and margin, pair-weighted over batches.

    With an accelerator of several processes, each scores every W-th batch with the bare model and the
    pair-weighted sums are added up: every process returns the figures of the whole held-out set (sharded,
    all run as many forwards: ``sharding.even_batches``).
    """
    if not groups:
        return {}
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin"), 0.0)
    n_pairs = 0
    device = next(model.parameters()).device
    for start, counted in sharding.even_batches(len(groups), config.batch_size, rank=rank, world=world,
                                                sharded=sharded):  # this process's batches
        with autocast(precision, device):
            out = dpo_batch(model, groups[start: start + config.batch_size], config, pad_id, share_prefix)
        if not counted:
            continue
        out["loss"] = out["loss"].item()
        for key in totals:
            totals[key] += out[key] * out["pairs"]
        n_pairs += out["pairs"]
    model.train(was_training)
    if world > 1:
        totals = distributed.sums({**totals, "pairs": n_pairs}, accelerator)
        n_pairs = int(totals.pop("pairs"))
    return {**{k: v / max(n_pairs, 1) for k, v in totals.items()}, "pairs": n_pairs}


def _train_step(model, groups: list[DPOGroup], config: DPOConfig, pad_id: int, accelerator, precision: str,
                optimizer, trainable, share_prefix: bool = False) -> dict:
    """One optimizer step on one step's groups (this process's share of them under data parallelism).

    Each process scales its pair-weighted mean by W·w_r/w (``distributed.global_mean_scales``), so DDP's
    average of the gradients is the gradient of the whole step's weighted mean, as on one process.
    """
    world = accelerator.num_processes
    padding = False
    if world > 1:
        mine, padding = distributed.shard(range(len(groups)), rank=accelerator.process_index, world=world)
        groups = [groups[i] for i in mine]
    with autocast(precision, accelerator.device):
        out = dpo_batch(model, groups, config, pad_id, share_prefix)
    loss = out["loss"]
    if world > 1:
        weight = 0.0 if padding else sum(w for g in groups for _, _, w in g.pairs)
        loss = loss * distributed.global_mean_scales(accelerator, pair_weight=weight, responses=0)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over processes here
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip or float("inf"))  # synced: same everywhere
    optimizer.step()
    metrics = {k: v for k, v in out.items() if k not in ("loss", "pairs")}
    grad_norm = sharding.grad_norm_value(grad_norm)
    if world == 1:
        return {**metrics, "loss": loss.item(), "pairs": out["pairs"], "grad_norm": grad_norm}
    pairs = 0 if padding else out["pairs"]
    means, total_pairs = distributed.weighted_means(metrics, pairs, accelerator)  # the whole step's figures
    global_loss = distributed.sum_over_processes([loss.item()], accelerator)[0] / world
    return {**means, "loss": global_loss, "pairs": int(total_pairs), "grad_norm": grad_norm}


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters training changes (all of a full model; a LoRA adapter's own), by name.
    Sharded (FSDP): every process gathers, the main one keeps the whole tensors ({} on the others)."""
    if sharding.is_sharded_module(model):
        return sharding.full_trainable_state(model)
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy ``trainable_state``'s tensors back into ``model`` in place (the DDP wrapper shares them; sharded, the
    main process's tensors are broadcast and every process keeps its shard)."""
    if sharding.is_sharded_module(model):
        return sharding.load_trainable_from_main(model, state)
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise RuntimeError(f"kept weights do not match the model: {missing[:5]}")
    for name, value in state.items():
        params[name].copy_(value)


@dataclass
class EarlyStopping:
    """Early stopping on held-out implicit-reward accuracy (``config.early_stopping_patience`` > 0).

    Each evaluation either beats the best accuracy by more than ``min_delta`` (it becomes the best: its step,
    figures and a CPU copy of the trainable weights are kept, the count of bad evaluations goes back to 0) or
    adds one bad evaluation; a tie keeps the earlier step (fewer steps from the reference). ``exhausted`` once
    ``patience`` evaluations in a row were bad. ``state()`` goes in each checkpoint's ``extra`` (tensors and
    numbers only: ``torch.load(weights_only=True)`` reads it), so a resumed run continues the same count.

    >>> stopper = EarlyStopping(patience=2, min_delta=0.0)
    >>> [stopper.update(step, {"reward_accuracy": a, "loss": 0.5}, None) for step, a in ((2, 0.6), (4, 0.6), (6, 0.7))]
    [True, False, True]
    >>> stopper.update(8, {"reward_accuracy": 0.65, "loss": 0.5}, None), stopper.exhausted, stopper.best_step
    (False, False, 6)
    >>> stopper.update(10, {"reward_accuracy": 0.7, "loss": 0.4}, None), stopper.exhausted, stopper.best_step
    (False, True, 6)
    """

    patience: int
    min_delta: float
    best_step: int | None = None
    best_accuracy: float | None = None
    best_loss: float | None = None
    bad_evals: int = 0
    best_weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def start(cls, config: DPOConfig, state: dict | None) -> "EarlyStopping | None":
        """None when off; else fresh, or continued from a checkpoint's ``state()``."""
        if not config.early_stopping_patience:
            return None
        stopper = cls(patience=config.early_stopping_patience, min_delta=config.early_stopping_min_delta)
        if state:
            stopper.best_step, stopper.best_accuracy = state["best_step"], state["best_accuracy"]
            stopper.best_loss, stopper.bad_evals = state["best_loss"], int(state["bad_evals"])
            stopper.best_weights = state["best_weights"]
        return stopper

    def update(self, step: int, figures: dict[str, float], model) -> bool:
        """Record the evaluation at ``step``; True when it is the new best (its weights are then kept)."""
        accuracy = float(figures["reward_accuracy"])
        if self.best_accuracy is None or accuracy > self.best_accuracy + self.min_delta:
            self.best_step, self.best_accuracy, self.best_loss = step, accuracy, float(figures["loss"])
            self.bad_evals = 0
            self.best_weights = trainable_state(model) if model is not None else None
            return True
        self.bad_evals += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_evals >= self.patience

    def state(self) -> dict:
        return {"best_step": self.best_step, "best_accuracy": self.best_accuracy, "best_loss": self.best_loss,
                "bad_evals": self.bad_evals, "best_weights": self.best_weights}


def use_prefix_sharing(model, config: DPOConfig, groups: list[DPOGroup], pad_id: int, hooks: TrainHooks) -> bool:
    """config.share_prefix, if the policy gives the unshared log-probs with it on a few groups (else log why not)."""
    if not config.share_prefix:
        return False
    device = next(model.parameters()).device
    error = prefix_sharing.logprob_sharing_error(model, [g.sequences for g in groups[:4]], pad_id, device)
    if not error <= 1e-3:  # float32 summation order gives ~1e-5 on a sum of log-probs
        hooks.log(f"prefix sharing off: log-probs differ from the unshared ones by {error:.3g} on this policy")
        return False
    return True


def train_dpo(
    config: DPOConfig, train: list[RankedGroup], eval: list[RankedGroup], *, output_dir: str | Path,
    hooks: TrainHooks, resume: bool = True, health_watch: HealthWatch | None = None,
) -> dict:
    """Train the policy with DPO, evaluate, checkpoint and save it; return the run summary.

    Writes ``output_dir/checkpoints/step-N/`` every ``checkpoint_every`` steps and ``output_dir/policy/``
    at the end. If hooks.should_stop() turns true it saves a checkpoint and returns ``{"stopped": True}``;
    calling again with resume=True continues from there. Under ``accelerate launch`` every process calls
    this with the same arguments; each takes every W-th prompt of a step, only the main one calls ``hooks``
    and writes files, and all of them return the same summary. ``health_watch``: the in-run health check
    every ``config.health_every`` steps (``training.ml.health_watch``; main process only). ``eval``: held-out
    groups, to which ``config.eval_fraction`` of the training prompts are added; with early stopping on, the
    summary adds ``stopped_early``, ``best_step``, ``best_eval_accuracy`` and ``best_eval_loss`` (``final_eval``
    stays the last evaluation's figures) and the policy saved is the best step's.
    """
    config.validate()
    output_dir = Path(output_dir)
    held_out = list(eval)
    if config.eval_fraction > 0:  # a share of the PROMPTS: every group of a held-out prompt leaves training
        train, split = split_by_prompt(train, config.eval_fraction, config.seed)
        held_out += split
    accelerator = distributed.make_accelerator(shards=True)  # one process: plain placement; several: DDP (or FSDP
    sharded = sharding.is_sharded(accelerator)  # with an FSDP config) over NCCL (CUDA) or gloo (CPU)
    if sharded:
        sharding.refuse_unsupported(config, health_watch=health_watch)
    main = accelerator.is_main_process
    hooks = hooks if main else NullHooks()  # cancel is asked of the main process only, then shared
    torch.set_num_threads(distributed.threads_per_process(config.num_threads, accelerator.num_processes))
    precision = resolve_mixed_precision(config.mixed_precision, accelerator.device)
    torch.manual_seed(config.seed)
    model, tokenizer = load_trainable_policy(config, adapter=config.adapter)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    model = distributed.place(model, accelerator)  # sharded: each process keeps its shard, and all score together
    pad_id = tokenizer.pad_token_id
    train_data = encode_dpo_groups(tokenizer, train, fill_ref_logprobs(model, tokenizer, train, config, hooks), config)
    eval_data = encode_dpo_groups(tokenizer, held_out, fill_ref_logprobs(model, tokenizer, held_out, config, hooks),
                                  config)
    if not train_data:
        raise ValueError("no training pairs: every training group is empty or fully tied")
    if config.early_stopping_patience and not eval_data:
        raise ConfigError("eval_fraction", f"{config.eval_fraction} holds out no prompt with a pair of "
                                           f"{len({g.prompt_id for g in train + held_out})} prompts: early stopping "
                                           "needs held-out pairs (raise it, or give more prompts)")
    num_pairs = sum(len(g.pairs) for g in train_data)
    hooks.log(f"DPO on {len(train_data)} prompts, {num_pairs} pairs; held out: {len(eval_data)} prompts"
              + (f" (eval_fraction {config.eval_fraction}, split by prompt)" if config.eval_fraction else "")
              + (f"; early stopping: patience {config.early_stopping_patience} evaluations every "
                 f"{config.eval_every} steps, min_delta {config.early_stopping_min_delta}"
                 if config.early_stopping_patience else "")
              + (f"; {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""))
    share = use_prefix_sharing(model, config, train_data, pad_id, hooks)
    total = total_steps_for(config, len(train_data))  # a step is batch_size prompts over all processes
    optimizer, scheduler = make_optimizer(model, config, total)
    checkpoints = output_dir / "checkpoints"

    stopper: EarlyStopping | None = None

    def save_checkpoint(at_step: int) -> None:
        full = sharding.full_states(model, optimizer) if sharded else {}  # every process gathers, the main one writes
        if main:  # early stopping's state (best weights included) is written with the checkpoint, atomically
            checkpoint_save(root=checkpoints, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
                            keep=config.keep_checkpoints,
                            extra={"early_stopping": stopper.state()} if stopper else None, **full)

    step, extra = checkpoint_resume(checkpoints, model=model, optimizer=optimizer, scheduler=scheduler,
                                    log=hooks.log, resume=resume, sharded=sharded)
    stopper = EarlyStopping.start(config, extra.get("early_stopping"))
    if stopper and stopper.best_step is not None:
        hooks.log(f"early stopping resumed: best held-out accuracy {stopper.best_accuracy:.4f} at step "
                  f"{stopper.best_step}, {stopper.bad_evals} of {stopper.patience} evaluations without a better one")
    stopped_early = False
    health = InRunHealth.start(health_watch, config, output_dir, hooks, main=main, resume_step=step)
    trained = distributed.wrap(model, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    train_seconds, pairs_seen, last_eval = 0.0, 0, {}
    while step < total:
        if distributed.any_process(hooks.should_stop(), accelerator):
            save_checkpoint(step)
            hooks.log(f"stopped at step {step} of {total}; checkpoint kept")
            accelerator.wait_for_everyone()
            return {"stopped": True, "steps": step, "total_steps": total}
        started = time.perf_counter()
        groups = [train_data[i] for i in batch_indices(len(train_data), config.batch_size, step, config.seed)]
        out = _train_step(trained, groups, config, pad_id, accelerator, precision, optimizer, trainable, share)
        scheduler.step()
        step += 1
        train_seconds += time.perf_counter() - started
        pairs_seen += out["pairs"]
        hooks.on_step(step, total, {**out, "lr": scheduler.get_last_lr()[0],
                                    **health.at_step(step, total, model, tokenizer)})
        if eval_data and (step % config.eval_every == 0 or step == total):
            last_eval = evaluate(model, eval_data, config, pad_id, accelerator, precision, share, sharded)
            hooks.on_eval(step, last_eval)
            if stopper is not None:
                stopper.update(step, last_eval, model)
                # the figures are the same on every process; the decision is shared all the same
                if distributed.any_process(stopper.exhausted, accelerator) and step < total:
                    stopped_early = True
                    break
        if step % config.checkpoint_every == 0 and step < total:
            save_checkpoint(step)
    if stopper is not None and stopper.best_weights is not None:
        load_trainable_state(model, stopper.best_weights)  # the policy saved is the best held-out one
        hooks.log((f"early stopping at step {step} of {total}: {stopper.bad_evals} held-out evaluations in a row "
                   f"did not beat" if stopped_early else f"early stopping did not stop the run ({step} steps); best")
                  + f" held-out accuracy {stopper.best_accuracy:.4f} (step {stopper.best_step}, loss "
                  f"{stopper.best_loss:.4f}); the policy saved is step {stopper.best_step}'s")
    policy_dir = output_dir / "policy"
    weights = sharding.full_model_state(model) if sharded else None  # every process gathers, the main one writes
    if main:
        save_policy(model.eval(), tokenizer, policy_dir, state_dict=weights)
    hooks.log(f"saved policy to {policy_dir}")
    accelerator.wait_for_everyone()  # no process returns before the policy is on disk
    return {
        "stopped": False, "steps": step, "total_steps": total, "num_pairs": num_pairs, "num_prompts": len(train_data),
        "eval_prompts": len(eval_data), "final_eval": last_eval, "prefix_sharing": share,
        **({"stopped_early": stopped_early, "best_step": stopper.best_step,
            "best_eval_accuracy": stopper.best_accuracy, "best_eval_loss": stopper.best_loss} if stopper else {}),
        "train_seconds": round(train_seconds, 3),
        "pairs_per_second": round(pairs_seen / train_seconds, 2) if train_seconds else None,
        "processes": accelerator.num_processes, "sharded": sharded, **policy_summary(model, config, policy_dir), **health.summary(),
    }
