"""The collect-train loop in memory: generate -> simulated labelling -> (reward model) -> DPO -> next round.

Round 0's policy is the SFT policy. Round r samples K responses for M prompts from policy r; simulated
labelers rank them by utility + Gaussian noise (scores closer than ``tie_threshold`` tie); DPO starts from
policy r with the stored generation log-probs as reference and gives policy r+1. Each round reports mean
utility ± standard error, the reward model's held-out accuracy, KL(π_r ‖ π_0) on the round's prompts and
health figures (share ending with EOS, share distinct, per-token NLL under π_0).

The Django ``run_loop`` command calls the same per-round functions (``round_generate``, ``round_label``,
``round_train_reward``, ``round_train_dpo``, ``round_metrics``) with rows from the database instead.
No Django here.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from training.ml.config import DPOConfig, RewardConfig, SFTConfig
from training.ml.generation import GeneratedSample, generate_samples, load_policy, mean_token_nll
from training.ml.types import NullHooks, RankedGroup

Utility = Callable[[list[dict], str], float]


@dataclass
class LoopConfig:
    """Defaults are the demo's, fixed before the 3-seed check in docs/loop.md."""

    seed: int = 0
    rounds: int = 3
    prompts_per_round: int = 128
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    labelers: int = 1  # rankings per prompt
    label_noise: float = 0.25  # std of the Gaussian noise added to the utility
    tie_threshold: float = 0.05  # noisy scores closer than this tie
    sft_steps: int = 400
    sft_learning_rate: float = 3e-3
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 2e-4
    dpo_epochs: float = 2.0
    dpo_batch_size: int = 8
    train_reward_model: bool = True
    reward_steps: int = 60
    reward_learning_rate: float = 1e-3
    num_threads: int = 1  # tiny models gain nothing from more; oversubscribed cores lose a lot


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def tiers_from_scores(scores: list[float], tie_threshold: float) -> list[list[int]]:
    """Indices sorted by score, best first, with neighbours closer than ``tie_threshold`` in one tier.

    >>> tiers_from_scores([0.1, 0.9, 0.12, 0.5], tie_threshold=0.05)
    [[1], [3], [2, 0]]
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tiers = [[order[0]]] if order else []
    for prev, i in zip(order, order[1:]):
        if scores[prev] - scores[i] < tie_threshold:
            tiers[-1].append(i)
        else:
            tiers.append([i])
    return tiers


def round_prompts(pool: list[list[dict]], n: int, *, seed: int, round_index: int) -> list[list[dict]]:
    """``n`` prompts drawn from the pool (without replacement while it lasts), deterministic per round."""
    rng = random.Random(seed * 1000 + round_index)
    return [pool[i] for i in (rng.sample(range(len(pool)), n) if n <= len(pool) else
                              [rng.randrange(len(pool)) for _ in range(n)])]


def round_generate(policy_dir: str, prompts: list[list[dict]], *, config: LoopConfig, round_index: int,
                   model=None, tokenizer=None) -> list[list[GeneratedSample]]:
    """K samples per prompt from the round's policy, each with log π(y|x) for DPO's reference."""
    return generate_samples(
        policy_dir, prompts, k=config.k, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=config.seed * 1000 + round_index, model=model, tokenizer=tokenizer,
    )


def round_label(prompts: list[list[dict]], samples: list[list[GeneratedSample]], *, utility: Utility,
                config: LoopConfig, round_index: int) -> list[RankedGroup]:
    """Simulated labelers: each ranks a prompt's K samples by utility + N(0, noise²), near-ties tied."""
    rng = random.Random(config.seed * 7919 + round_index)
    groups = []
    for i, (messages, group) in enumerate(zip(prompts, samples, strict=True)):
        clean = [utility(messages, s.text) for s in group]
        rankings = [tiers_from_scores([u + rng.gauss(0.0, config.label_noise) for u in clean], config.tie_threshold)
                    for _ in range(config.labelers)]
        groups.append(RankedGroup(
            prompt_id=round_index * 100_000 + i, messages=messages, responses=[s.text for s in group],
            rankings=rankings, ref_logprobs=[s.logprob for s in group],
        ))
    return groups


def round_train_reward(groups: list[RankedGroup], *, base_model: str, output_dir: Path, config: LoopConfig) -> float:
    """Train a reward model (initialised from ``base_model``) on the groups; return held-out pair accuracy."""
    from training.ml.data import split_by_prompt
    from training.ml.trainers.reward import train_reward_model

    train, held_out = split_by_prompt(groups, 0.2, config.seed)
    reward_config = RewardConfig(base_model=base_model, seed=config.seed, max_steps=config.reward_steps,
                                 learning_rate=config.reward_learning_rate, batch_size=8, eval_every=10_000,
                                 checkpoint_every=10_000, num_threads=config.num_threads)
    summary = train_reward_model(reward_config, train, held_out, output_dir=output_dir, hooks=NullHooks(),
                                 resume=False)
    return float(summary["final_eval"].get("accuracy", float("nan")))


def round_train_dpo(policy_dir: str, groups: list[RankedGroup], *, output_dir: Path, config: LoopConfig,
                    hooks=None) -> dict:
    """DPO from the round's policy on its groups; the summary's ``policy_dir`` is the next round's policy."""
    dpo_config = DPOConfig(
        base_model=policy_dir, seed=config.seed, epochs=config.dpo_epochs, batch_size=config.dpo_batch_size,
        learning_rate=config.dpo_learning_rate, beta=config.dpo_beta, eval_every=10_000, checkpoint_every=10_000,
        num_threads=config.num_threads, lr_scheduler="constant",
    )
    from training.ml.trainers.dpo import train_dpo

    return train_dpo(dpo_config, groups, [], output_dir=output_dir, hooks=hooks or NullHooks(), resume=False)


def round_metrics(prompts: list[list[dict]], samples: list[list[GeneratedSample]], *, utility: Utility,
                  round0, policy=None) -> dict[str, float]:
    """Utility (mean, standard error), KL to round 0, and health of one round's samples.

    ``round0`` and ``policy`` are (model, tokenizer) pairs; KL(π_r ‖ π_0) is estimated on the round's own
    samples (drawn from π_r at temperature 1) as the mean of log π_r(y|x) − log π_0(y|x).
    """
    flat_prompts = [m for m, group in zip(prompts, samples) for _ in group]
    flat = [s for group in samples for s in group]
    texts = [s.text for s in flat]
    utilities = [utility(m, t) for m, t in zip(flat_prompts, texts)]
    model0, tokenizer0 = round0
    from training.ml.generation import sequence_logprobs

    logp0 = sequence_logprobs(model0, tokenizer0, flat_prompts, texts).tolist()
    return {
        "utility_mean": statistics.fmean(utilities),
        "utility_se": _stderr(utilities),
        "kl_to_round0": statistics.fmean(s.logprob - l0 for s, l0 in zip(flat, logp0)),
        "eos_rate": statistics.fmean(s.ended_with_eos for s in flat),
        "distinct_rate": len(set(zip(map(str, flat_prompts), texts))) / len(flat),
        "nll_round0": mean_token_nll(model0, tokenizer0, flat_prompts, texts),
        "mean_tokens": statistics.fmean(s.num_tokens for s in flat),
    }


def build_sft_policy(workdir: Path, *, config: LoopConfig, demonstrations, build_base: Callable[..., Path]) -> str:
    """Round 0's policy: a tiny base model fine-tuned on the demonstrations; returns its directory."""
    from training.ml.trainers.sft import train_sft

    base = build_base(workdir / "base", seed=config.seed)
    sft_config = SFTConfig(base_model=str(base), seed=config.seed, max_steps=config.sft_steps,
                           learning_rate=config.sft_learning_rate, batch_size=32, warmup_ratio=0.05,
                           lr_scheduler="cosine", eval_every=10_000, checkpoint_every=10_000,
                           num_threads=config.num_threads, eval_fraction=0.0)
    return train_sft(sft_config, demonstrations, output_dir=workdir / "sft", hooks=NullHooks(), resume=False)["policy_dir"]


def run_loop(config: LoopConfig, workdir: Path, *, utility: Utility, prompt_pool: list[list[dict]],
             demonstrations, build_base: Callable[..., Path], log: Callable[[str], None] = print) -> list[dict]:
    """SFT, then rounds 0..config.rounds; returns one metrics dict per round (round 0 = SFT policy)."""
    started = time.perf_counter()
    workdir = Path(workdir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    policy_dir = build_sft_policy(workdir, config=config, demonstrations=demonstrations, build_base=build_base)
    log(f"[{time.perf_counter() - started:6.1f}s] SFT policy: {policy_dir}")
    round0 = load_policy(policy_dir)
    history, all_groups = [], []
    for r in range(config.rounds + 1):
        prompts = round_prompts(prompt_pool, config.prompts_per_round, seed=config.seed, round_index=r)
        policy = round0 if r == 0 else load_policy(policy_dir)
        samples = round_generate(policy_dir, prompts, config=config, round_index=r, model=policy[0],
                                 tokenizer=policy[1])
        metrics = {"round": r, **round_metrics(prompts, samples, utility=utility, round0=round0)}
        if r < config.rounds:
            groups = round_label(prompts, samples, utility=utility, config=config, round_index=r)
            all_groups.extend(groups)
            if config.train_reward_model:
                metrics["rm_accuracy"] = round_train_reward(all_groups, base_model=str(round0_dir(workdir)),
                                                            output_dir=workdir / f"rm{r}", config=config)
            hooks = NullHooks()
            summary = round_train_dpo(policy_dir, groups, output_dir=workdir / f"dpo{r}", config=config, hooks=hooks)
            metrics["dpo_train_accuracy"] = hooks.steps[-1][1]["reward_accuracy"]
            policy_dir = summary["policy_dir"]
        metrics["elapsed_s"] = time.perf_counter() - started
        history.append(metrics)
        log(format_round(metrics))
    return history


def round0_dir(workdir: Path) -> Path:
    return Path(workdir) / "sft" / "policy"


def format_round(m: dict) -> str:
    rm = f"{m['rm_accuracy']:.3f}" if "rm_accuracy" in m else "  -  "
    return (f"[{m['elapsed_s']:6.1f}s] round {m['round']}: utility {m['utility_mean']:+.3f} ± {m['utility_se']:.3f}"
            f" | RM acc {rm} | KL to r0 {m['kl_to_round0']:.3f} | EOS {100 * m['eos_rate']:.1f}%"
            f" | distinct {100 * m['distinct_rate']:.1f}% | NLL@r0 {m['nll_round0']:.3f} | tokens {m['mean_tokens']:.1f}")


def loop_config_dict(config: LoopConfig) -> dict:
    return asdict(config)
