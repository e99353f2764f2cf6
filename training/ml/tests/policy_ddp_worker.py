"""One process of the 2-process SFT, DPO, GRPO and PPO tests (``test_distributed_policy.py``); run under
``accelerate launch``.

    python -m training.ml.tests.policy_ddp_worker sft|sft_lora|dpo|dpo_es|grpo|ppo|ppo_critic BASE_MODEL OUT_DIR

Every process trains (a) straight through and (b) stopped after step 4 (``dpo_es``, DPO with early stopping: 8;
its own hooks ask; the trainer asks only the main process's), then resumed, and writes what the test checks: its
final trainable parameters (``params-<run>-rank<R>.pt``), which files it wrote (``writes-rank<R>.txt``:
checkpoints and policies), what its trainer returned and how many steps its own hooks saw
(``ranks-rank<R>.json``), and, on the main process, the metrics the hooks received (``result.json``). PPO takes
the tiny reward model ``rm`` beside BASE_MODEL (scores and, for ``ppo_critic``, the critic). Launched with an FSDP
accelerate config (``test_fsdp.py``), the parameters written are the full ones, gathered by every process.
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from training.ml import demo_task
from training.ml.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig
from training.ml.trainers import dpo, grpo, ppo, sft
from training.ml.types import NullHooks, RankedGroup

RANK = int(os.environ.get("RANK", "0"))
PROMPTS = [[{"role": "user", "content": w}] for w in ("the cat", "a dog", "count", "apples please", "the park", "sat on")]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "count the apples please", "a tall tree by a river"] * 20


class StopAfter(NullHooks):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop_step = step

    def should_stop(self) -> bool:
        return bool(self.steps) and self.steps[-1][0] >= self.stop_step


def vowel_share(prompt_messages, response_text: str) -> float:
    """Toy reward: share of the response's characters that are vowels."""
    return sum(c in "aeiou" for c in response_text) / max(len(response_text), 1)


def dpo_groups(n: int = 21, seed: int = 1) -> list[RankedGroup]:
    """Two bright and two dark responses per prompt, ranked bright first; unequal ranking weights."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        noun = rng.choice(demo_task.NOUNS)
        words = [rng.choice(demo_task.BRIGHT), rng.choice(demo_task.BRIGHT), rng.choice(demo_task.DARK),
                 rng.choice(demo_task.DARK)]
        responses = [f"the {w} {noun} {rng.choice(demo_task.VERBS)}." for w in words]
        groups.append(RankedGroup(prompt_id=i, messages=demo_task.demo_prompt(noun), responses=responses,
                                  rankings=[[[0, 1], [2, 3]]], weights=[1.0 + (i % 3)], ref_logprobs=[None] * 4))
    return groups


def dpo_config(base_model: str) -> DPOConfig:
    """21 prompts, 5 per step: 3 + 2 per process, and at step 5 one prompt (the other process pads)."""
    return DPOConfig(base_model=base_model, beta=0.5, learning_rate=3e-3, batch_size=5, max_steps=6, eval_every=3,
                     checkpoint_every=3, lr_scheduler="linear", num_threads=1)


def dpo_early_stopping_config(base_model: str) -> DPOConfig:
    """30% of the 21 prompts held out (6), 5 per step; a learning rate that tops held-out accuracy by step 6, so
    that early stopping (patience 2, every 2 steps) ends the run at step 10 of 14."""
    return DPOConfig(base_model=base_model, beta=0.5, learning_rate=3e-2, batch_size=5, max_steps=14, eval_every=2,
                     checkpoint_every=3, lr_scheduler="constant", num_threads=1, eval_fraction=0.3,
                     early_stopping_patience=2)


def grpo_config(base_model: str) -> GRPOConfig:
    """3 prompts × 4 samples a step (2 + 1 prompts per process), minibatches of 4 rows over 2 iterations."""
    return GRPOConfig(base_model=base_model, max_steps=6, batch_size=3, samples_per_prompt=4, max_new_tokens=6,
                      mini_batch_size=4, num_iterations=2, learning_rate=3e-2, checkpoint_every=3, seed=0, num_threads=1)


def ppo_config(base_model: str, value_model: str = "head") -> PPOConfig:
    """3 prompts × 4 samples a step (2 + 1 prompts per process), minibatches of 3 rows (some hold no row of one
    process) over 2 epochs; whitened advantages, adaptive β, PPO-ptx."""
    return PPOConfig(base_model=base_model, max_steps=6, batch_size=3, samples_per_prompt=4, max_new_tokens=6,
                     mini_batch_size=3, ppo_epochs=2, learning_rate=1e-2, kl_coef=0.05, adaptive_kl=True,
                     kl_target=0.01, kl_horizon=10, ptx_coef=0.5, ptx_batch_size=2, value_model=value_model, checkpoint_every=3, seed=0,
                     num_threads=1)


PTX_TEXTS = TEXTS[:3]


def sft_config(base_model: str) -> SFTConfig:
    """36 training examples (4 held out), 7 per step: 4 + 3 per process, and at step 6 one (the other pads)."""
    return SFTConfig(base_model=base_model, max_steps=6, learning_rate=3e-3, batch_size=7, eval_every=3,
                     eval_fraction=0.1, checkpoint_every=3, num_threads=1)


def sft_lora_config(base_model: str) -> SFTConfig:
    """``sft_config`` training a LoRA adapter; no dropout: only the main process's RNG state is checkpointed, so
    another process's dropout masks after a resume would not be those of the straight run."""
    return replace(sft_config(base_model), lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2)


def run(kind: str, base_model: str, output_dir: Path, hooks) -> dict:
    if kind in ("sft", "sft_lora"):
        config = sft_config(base_model) if kind == "sft" else sft_lora_config(base_model)
        return sft.train_sft(config, demo_task.make_demonstrations(40, seed=3), output_dir=output_dir,
                             hooks=hooks)
    if kind == "dpo_es":
        return dpo.train_dpo(dpo_early_stopping_config(base_model), dpo_groups(), [], output_dir=output_dir,
                             hooks=hooks)
    if kind == "dpo":
        groups = dpo_groups()
        return dpo.train_dpo(dpo_config(base_model), groups[:21], dpo_groups(6, seed=2), output_dir=output_dir,
                             hooks=hooks)
    if kind in ("ppo", "ppo_critic"):
        config = ppo_config(base_model, "reward_model" if kind == "ppo_critic" else "head")
        return ppo.train_ppo(config, PROMPTS, policy_dir=base_model, output_dir=str(output_dir), reward_fn=vowel_share,
                             reward_model_dir=str(Path(base_model).parent / "rm"), hooks=hooks, ptx_texts=PTX_TEXTS)
    return grpo.train_grpo(grpo_config(base_model), PROMPTS, policy_dir=base_model, output_dir=str(output_dir),
                           reward_fn=vowel_share, hooks=hooks)


def instrument(kind: str, out: Path) -> dict:
    """Record every checkpoint/policy write of this process, and keep the policy to dump its weights."""
    seen: dict = {}
    module = {"sft": sft, "sft_lora": sft, "dpo": dpo, "dpo_es": dpo, "grpo": grpo, "ppo": ppo, "ppo_critic": ppo}[kind]

    def note(line: str) -> None:
        with open(out / f"writes-rank{RANK}.txt", "a") as handle:
            handle.write(line + "\n")

    real_checkpoint_save = module.checkpoint_save

    def checkpoint_save(**kwargs):
        note(f"checkpoint {Path(kwargs['root']).parent.name} {kwargs['step']}")
        return real_checkpoint_save(**kwargs)

    module.checkpoint_save = checkpoint_save
    if kind in ("sft", "sft_lora", "dpo", "dpo_es"):
        real_load, real_save = module.load_trainable_policy, module.save_policy

        def load_trainable_policy(config, adapter=""):
            model, tokenizer = real_load(config, adapter)
            seen["model"] = model
            return model, tokenizer

        def save_policy(model, tokenizer, target, **kwargs):
            note(f"policy {Path(target).parent.name}")
            return real_save(model, tokenizer, target, **kwargs)

        module.load_trainable_policy, module.save_policy = load_trainable_policy, save_policy
        return seen

    def watch_saves(policy) -> None:
        real_save = policy.save_pretrained

        def save_pretrained(target, **kwargs):
            if Path(target).name == "policy":  # not a checkpoint's model/
                note(f"policy {Path(target).parent.name}")
            return real_save(target, **kwargs)

        policy.save_pretrained = save_pretrained

    if kind == "grpo":
        real_load = grpo.load_rl_policy

        def load_rl_policy(policy_dir, config, device):
            policy, reference, tokenizer = real_load(policy_dir, config, device)
            seen["model"] = policy
            watch_saves(policy)
            return policy, reference, tokenizer

        grpo.load_rl_policy = load_rl_policy
        return seen
    real_load_models = ppo.load_ppo_models

    def load_ppo_models(policy_dir, config, reward_model_dir, device="cpu"):
        models = real_load_models(policy_dir, config, reward_model_dir, device)
        value = models.value_head if models.value_head is not None else models.critic
        seen["model"] = torch.nn.ModuleDict({"policy": models.policy, "value": value})  # both trained modules
        watch_saves(models.policy)
        return models

    ppo.load_ppo_models = load_ppo_models
    return seen


def trainable_parameters(model) -> dict[str, torch.Tensor]:
    """The trained parameters by name: this process's own, or, sharded (FSDP), the full ones gathered on every process."""
    from torch.distributed.fsdp import FSDPModule

    trainable = [k for k, v in model.named_parameters() if v.requires_grad]
    if not isinstance(model, FSDPModule):
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every process
    return {k: full[k].detach().clone() for k in trainable}


def held_share(model) -> float:
    """The share of the trainable parameters' elements this process holds (1.0 unless they are sharded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
    return local / sum(p.numel() for p in params)


def main(kind: str, base_model: str, out: Path) -> None:
    seen = instrument(kind, out)
    results, ranks = {}, {}
    stop_after = 8 if kind == "dpo_es" else 4
    for name, hooks_list in (("straight", [NullHooks()]), ("resumed", [StopAfter(stop_after), NullHooks()])):
        summaries = []
        for hooks in hooks_list:
            summary = run(kind, base_model, out / name, hooks)
            summaries.append(summary)
        torch.save(trainable_parameters(seen["model"]), out / f"params-{name}-rank{RANK}.pt")
        ranks[name] = {"summaries": summaries, "hook_steps": [len(h.steps) for h in hooks_list],
                       "held_share": held_share(seen["model"])}
        results[name] = {"summary": summary, "steps": [h.steps for h in hooks_list], "evals": [h.evals for h in hooks_list]}
    (out / f"ranks-rank{RANK}.json").write_text(json.dumps(ranks))
    if RANK == 0:
        (out / "result.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
