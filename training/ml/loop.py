"""The collect-train loop, once: generate -> labelling -> reward model -> DPO/PPO/GRPO -> next round.

Round 0's policy is the SFT policy. Round r samples K responses for M prompts from policy r; labelers rank
them; a reward model is trained on all rankings so far. Then ``config.optimizer`` gives policy r+1 from policy
r: DPO on the round's rankings (the stored generation log-probs are its reference), or PPO/GRPO on the round's
prompts against that freshly trained reward model (PPO-ptx optional: γ × LM loss on the SFT demonstrations).
Policy r+1 must pass the health gate; a failure is retried once with ``safer_config``, and if the retry fails
too policy r is kept (``train_gated``). Each round reports mean utility ± standard error, the reward model's
held-out accuracy, KL(π_r ‖ π_0) and health figures (share ending with EOS, share distinct, per-token NLL
under π_0); the monitor (``training.ml.monitor``) flags a round whose labelers' utility fell, as reward
over-optimisation when the reward model's score rose meanwhile, and a round whose trained policy was kept.

``loop_rounds`` is that algorithm, on a ``LoopSteps``: ``MemorySteps`` here (``run_loop``: directories,
simulated labelers by ``utility`` + Gaussian noise, ``preferences.simulated``; what the benches run) or
``training.loop.DatabaseSteps`` (the Django ``run_loop`` command: every step a run on database rows, the
figures on each round's ``RoundReport``). Both take their settings from ``LoopConfig`` and their figures from
``round_metrics``; the run kinds in ``training/jobs/rl.py`` use ``rm_score_trend`` and ``ptx_texts_from``.
No Django here.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch

from preferences.simulated import simulated_tiers
from training.ml.config import OPTIMIZERS, DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig
from training.ml.generation import GeneratedSample, generate_samples, load_policy, mean_token_nll
from training.ml.monitor import format_round, round_flags
from training.ml.types import NullHooks, RankedGroup

Utility = Callable[[list[dict], str], float]
DPO_REFERENCES = ("previous", "round0")  # the round's own policy (its stored log-probs), or round 0's policy
HELD_OUT_ROUND = 10_000  # round_prompts index of the health gate's held-out prompts


@dataclass
class LoopConfig:
    """Defaults are the demo's, fixed before the 3-seed check in docs/loop.md; DPO's β and RPO's α were then
    picked by a rule written before the sweep, on the suite's tuning half (docs/loop.md, "The utility suite")."""

    seed: int = 0
    rounds: int = 3
    optimizer: str = "dpo"  # one of OPTIMIZERS: how policy r+1 is made from policy r
    prompts_per_round: int = 128
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    labelers: int = 1  # rankings per prompt
    label_noise: float = 0.25  # std of the Gaussian noise added to the utility
    tie_threshold: float = 0.05  # noisy scores closer than this tie
    sft_steps: int = 1200  # round 0 copies the prompt's noun as its demos do (docs/loop.md, "Round 0 ignored its prompt")
    sft_learning_rate: float = 3e-3
    dpo_beta: float = 0.2  # with dpo_rpo_alpha 1.0: picked by the rule in docs/loop.md (tuning half, seeds 1-2)
    dpo_learning_rate: float = 2e-4
    dpo_epochs: float = 2.0
    dpo_batch_size: int = 8
    dpo_loss_type: str = "sigmoid"  # DPOConfig.loss_type: sigmoid (DPO) or ipo
    dpo_label_smoothing: float = 0.0  # conservative DPO's ε
    dpo_rpo_alpha: float = 1.0  # RPO: α × per-token NLL of the chosen reply (0: plain DPO)
    dpo_reference: str = "previous"  # DPO's reference: "previous" (the round's own policy) or "round0"
    # Early stopping on held-out implicit-reward accuracy (DPOConfig.early_stopping_patience; 0: off, the default):
    # the round's DPO holds out dpo_eval_fraction of its prompts, scores them every dpo_eval_every steps, stops after
    # that many evaluations in a row without a better accuracy and keeps the best step's policy.
    dpo_early_stopping_patience: int = 0
    dpo_eval_fraction: float = 0.0  # DPOConfig.eval_fraction: share of the round's prompts held out (0: none)
    dpo_eval_every: int = 4  # DPOConfig.eval_every, when prompts are held out
    train_reward_model: bool = True
    reward_steps: int = 60  # DPO's loop only reports the reward model's accuracy
    rl_reward_steps: int = 200  # PPO/GRPO optimise against it, so it trains longer
    reward_learning_rate: float = 1e-3
    # RewardConfig.group_lr_scaling (on for users' reward runs) divides the rate by √(pairs per prompt); the loop's
    # rate and every loop figure (docs/loop.md) were measured with the rate as given, so the loop keeps it.
    reward_group_lr_scaling: bool = False
    # PPO against the round's reward model (value head on the policy, fixed KL coefficient). The strong KL
    # is what keeps it honest: at kl_coef 0.05 seed 1's first reward model was hacked (docs/ppo_grpo.md).
    ppo_steps: int = 24
    ppo_batch_size: int = 32  # prompts per step, one sample each
    ppo_learning_rate: float = 2e-4
    ppo_kl_coef: float = 0.5
    ppo_epochs: int = 2
    ppo_ptx_coef: float = 0.0  # γ of PPO-ptx on the SFT demonstrations (0: plain PPO)
    # GRPO against the round's reward model
    grpo_steps: int = 24
    grpo_batch_size: int = 8  # prompts per step
    grpo_samples: int = 8  # G per prompt
    grpo_learning_rate: float = 5e-4
    grpo_beta: float = 0.5
    rl_missing_eos_penalty: float = 1.0  # subtracted from the score of a response cut at max_new_tokens
    # The health gate (training.ml.health) on every new policy; a failure is retried once with
    # ``safer_config``, and if the retry fails too the round's policy is kept.
    health_gate: bool = True
    health_prompts: int = 32  # held-out prompts (a fixed sample of the pool, not a round's)
    health_min_eos_rate: float = 0.95
    health_min_distinct_rate: float = 0.90
    health_max_nll_rise: float = 1.0  # nats/token under round 0 (issue 12: fluent +0.22…+0.60, junk +2.5…+4.2)
    num_threads: int = 1  # tiny models gain nothing from more; oversubscribed cores lose a lot

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dpo_reference not in DPO_REFERENCES:
            raise ValueError(f"dpo_reference must be one of {', '.join(DPO_REFERENCES)}, got {self.dpo_reference!r}")
        if self.dpo_early_stopping_patience and not self.dpo_eval_fraction:
            raise ValueError("dpo_early_stopping_patience needs held-out prompts: set dpo_eval_fraction > 0 (e.g. 0.2)")

    @property
    def reward_model_steps(self) -> int:
        """Steps of each round's reward model: ``rl_reward_steps`` when PPO/GRPO optimise against it."""
        return self.reward_steps if self.optimizer == "dpo" else self.rl_reward_steps


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


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
        rankings = [simulated_tiers(dict(enumerate(clean)), noise=config.label_noise,
                                    tie_threshold=config.tie_threshold, rng=rng) for _ in range(config.labelers)]
        groups.append(RankedGroup(
            prompt_id=round_index * 100_000 + i, messages=messages, responses=[s.text for s in group],
            rankings=rankings, ref_logprobs=[s.logprob for s in group],
        ))
    return groups


def round_train_reward_model(groups: list[RankedGroup], *, base_model: str, output_dir: Path,
                             config: LoopConfig) -> tuple[str, float]:
    """Train a reward model (initialised from ``base_model``) on the groups; return (its directory, held-out
    pair accuracy). The directory is what PPO/GRPO optimise against."""
    from training.ml.data import split_by_prompt
    from training.ml.trainers.reward import train_reward_model

    train, held_out = split_by_prompt(groups, 0.2, config.seed)
    reward_config = RewardConfig(base_model=base_model, seed=config.seed, max_steps=config.reward_model_steps,
                                 learning_rate=config.reward_learning_rate,
                                 group_lr_scaling=config.reward_group_lr_scaling, batch_size=8, eval_every=10_000,
                                 checkpoint_every=10_000, num_threads=config.num_threads)
    summary = train_reward_model(reward_config, train, held_out, output_dir=output_dir, hooks=NullHooks(),
                                 resume=False)
    return summary["model_dir"], float(summary["final_eval"].get("accuracy", float("nan")))


def dpo_settings(config: LoopConfig) -> dict:
    """The DPO run settings of one loop round (LoopConfig's ``dpo_*`` fields), shared with the Django loop.
    ``eval_every`` only when prompts are held out (the callers' own value stands otherwise)."""
    held_out = {"eval_every": config.dpo_eval_every} if config.dpo_eval_fraction else {}
    return {"epochs": config.dpo_epochs, "batch_size": config.dpo_batch_size, "learning_rate": config.dpo_learning_rate,
            "beta": config.dpo_beta, "loss_type": config.dpo_loss_type, "label_smoothing": config.dpo_label_smoothing,
            "rpo_alpha": config.dpo_rpo_alpha, "lr_scheduler": "constant", "eval_fraction": config.dpo_eval_fraction,
            "early_stopping_patience": config.dpo_early_stopping_patience, **held_out}


def round_train_dpo(policy_dir: str, groups: list[RankedGroup], *, output_dir: Path, config: LoopConfig,
                    hooks=None, round0_dir: str | Path | None = None) -> dict:
    """DPO from the round's policy on its groups; the summary's ``policy_dir`` is the next round's policy.
    With ``config.dpo_reference == "round0"`` the reference is ``round0_dir``'s policy (scored once) instead of
    the stored generation log-probs."""
    reference = ""
    if config.dpo_reference == "round0":
        if round0_dir is None:
            raise ValueError('dpo_reference "round0" needs round0_dir')
        reference = str(round0_dir)
    dpo_config = DPOConfig(**{
        "base_model": policy_dir, "seed": config.seed, "eval_every": 10_000, "checkpoint_every": 10_000,
        "num_threads": config.num_threads, "reference_model": reference, **dpo_settings(config),
    })
    from training.ml.trainers.dpo import train_dpo

    return train_dpo(dpo_config, groups, [], output_dir=output_dir, hooks=hooks or NullHooks(), resume=False)


def ppo_config(policy_dir: str, config: LoopConfig) -> PPOConfig:
    """The PPO settings of one loop round (LoopConfig's ``ppo_*`` fields; the rest are PPOConfig's defaults)."""
    return PPOConfig(
        base_model=policy_dir, seed=config.seed, max_steps=config.ppo_steps, batch_size=config.ppo_batch_size,
        learning_rate=config.ppo_learning_rate, lr_scheduler="constant", kl_coef=config.ppo_kl_coef,
        ppo_epochs=config.ppo_epochs, ptx_coef=config.ppo_ptx_coef, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature, top_p=config.top_p, missing_eos_penalty=config.rl_missing_eos_penalty,
        eval_every=10_000, checkpoint_every=10_000, num_threads=config.num_threads,
    )


def grpo_config(policy_dir: str, config: LoopConfig) -> GRPOConfig:
    """The GRPO settings of one loop round (LoopConfig's ``grpo_*`` fields; the rest are GRPOConfig's defaults)."""
    return GRPOConfig(
        base_model=policy_dir, seed=config.seed, max_steps=config.grpo_steps, batch_size=config.grpo_batch_size,
        samples_per_prompt=config.grpo_samples, learning_rate=config.grpo_learning_rate, lr_scheduler="constant",
        beta=config.grpo_beta, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, missing_eos_penalty=config.rl_missing_eos_penalty, eval_every=10_000,
        checkpoint_every=10_000, num_threads=config.num_threads,
    )


def ptx_texts_from(demonstrations, tokenizer) -> list[str]:
    """PPO-ptx's language-modelling texts: each demonstration as the chat-rendered prompt plus its response."""
    from training.ml.generation import prompt_ids

    return [tokenizer.decode(prompt_ids(tokenizer, messages)) + response for messages, response in demonstrations]


def round_train_ppo(policy_dir: str, prompts: list[list[dict]], *, reward_model_dir: str, output_dir: Path,
                    config: LoopConfig, hooks=None, ptx_texts: list[str] | None = None) -> dict:
    """PPO from the round's policy on its prompts against its reward model; the summary's ``policy_dir`` is
    the next round's policy. ``ptx_texts`` are needed when ``config.ppo_ptx_coef > 0`` (PPO-ptx)."""
    from training.ml.trainers.ppo import train_ppo

    return train_ppo(ppo_config(policy_dir, config), prompts, policy_dir=policy_dir, output_dir=str(output_dir),
                     reward_model_dir=reward_model_dir, hooks=hooks or NullHooks(), resume=False,
                     ptx_texts=ptx_texts if config.ppo_ptx_coef > 0 else None)


def round_train_grpo(policy_dir: str, prompts: list[list[dict]], *, reward_model_dir: str, output_dir: Path,
                     config: LoopConfig, hooks=None) -> dict:
    """GRPO from the round's policy on its prompts against its reward model; the summary's ``policy_dir`` is
    the next round's policy."""
    from training.ml.trainers.grpo import train_grpo

    return train_grpo(grpo_config(policy_dir, config), prompts, policy_dir=policy_dir, output_dir=str(output_dir),
                      reward_model_dir=reward_model_dir, hooks=hooks or NullHooks(), resume=False)


def rm_score_trend(step_metrics: list[dict[str, float]], key: str = "rm_score") -> float:
    """How much the reward model's mean score rose during a policy run: the mean of the last quarter of the
    steps minus the mean of the first quarter (one step each for runs under 8 steps; quarters damp the noise
    of single batches). NaN when the run logged no such score.

    >>> rm_score_trend([{"rm_score": 0.0}, {"rm_score": 1.0}, {"rm_score": 2.0}, {"rm_score": 4.0}])
    4.0
    """
    scores = [m[key] for m in step_metrics if key in m]
    if not scores:
        return float("nan")
    q = max(1, len(scores) // 4)
    return statistics.fmean(scores[-q:]) - statistics.fmean(scores[:q])


def round_metrics(prompts: list[list[dict]], samples: list[list[GeneratedSample]], *, utility: Utility,
                  round0, policy) -> dict[str, float]:
    """Utility (mean, standard error), KL to round 0, and health of one round's samples.

    ``round0`` and ``policy`` (the policy that drew the samples) are (model, tokenizer) pairs. KL(π_r ‖ π_0)
    is ``generation.token_kl`` on the sampled tokens (exact per-token KL summed over each response, so ≥ 0,
    and 0 for round 0 itself), averaged over the round's samples, with its standard error.
    """
    from training.ml.generation import sample_token_ids, token_kl

    if policy is None:
        raise TypeError("round_metrics needs the policy that drew the samples (pass round0 for round 0)")
    flat_prompts = [m for m, group in zip(prompts, samples) for _ in group]
    flat = [s for group in samples for s in group]
    texts = [s.text for s in flat]
    utilities = [utility(m, t) for m, t in zip(flat_prompts, texts)]
    model0, tokenizer0 = round0
    kl = token_kl(policy[0], model0, tokenizer0, flat_prompts, [sample_token_ids(tokenizer0, s) for s in flat]).tolist()
    return {
        "utility_mean": statistics.fmean(utilities),
        "utility_se": _stderr(utilities),
        "kl_to_round0": statistics.fmean(kl),
        "kl_to_round0_se": _stderr(kl),
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


def round_train_policy(policy_dir: str, prompts, groups, *, reward_model_dir: str | None, workdir: Path, r: int,
                       config: LoopConfig, ptx_texts: list[str] | None = None) -> tuple[dict, dict[str, float]]:
    """Policy r+1 from policy r with ``config.optimizer``; returns (summary, figures for the round's line)."""
    hooks = NullHooks()
    if config.optimizer == "dpo":
        summary = round_train_dpo(policy_dir, groups, output_dir=workdir / f"dpo{r}", config=config, hooks=hooks,
                                  round0_dir=round0_dir(workdir))
        early = {f"dpo_{k}": summary[k] for k in ("best_step", "best_eval_accuracy", "stopped_early") if k in summary}
        return summary, {"dpo_train_accuracy": hooks.steps[-1][1]["reward_accuracy"], **early}
    if reward_model_dir is None:
        raise ValueError(f"optimizer {config.optimizer!r} needs a reward model: set train_reward_model=True")
    if config.optimizer == "ppo":
        summary = round_train_ppo(policy_dir, prompts, reward_model_dir=reward_model_dir, output_dir=workdir / f"ppo{r}",
                                  config=config, hooks=hooks, ptx_texts=ptx_texts)
    else:
        summary = round_train_grpo(policy_dir, prompts, reward_model_dir=reward_model_dir,
                                   output_dir=workdir / f"grpo{r}", config=config, hooks=hooks)
    steps = [m for _, m in hooks.steps]
    return summary, {"rm_score_change": rm_score_trend(steps), "policy_kl": steps[-1]["kl"]}


def health_thresholds(config: LoopConfig):
    from training.ml.health import HealthThresholds

    return HealthThresholds(min_eos_rate=config.health_min_eos_rate, min_distinct_rate=config.health_min_distinct_rate,
                            max_nll_rise=config.health_max_nll_rise, prompts=config.health_prompts,
                            max_new_tokens=config.max_new_tokens)


def safer_config(config: LoopConfig) -> LoopConfig:
    """The retry rule after a policy fails the health gate: halve the optimiser's learning rate and double its
    KL anchor to the round's policy (DPO β, PPO kl_coef, GRPO β): a smaller step, held closer to the policy
    that generated the data.

    >>> c = safer_config(LoopConfig())
    >>> (c.dpo_learning_rate, c.dpo_beta, c.ppo_kl_coef, c.grpo_beta)
    (0.0001, 0.4, 1.0, 1.0)
    """
    return replace(config, dpo_learning_rate=config.dpo_learning_rate / 2, dpo_beta=config.dpo_beta * 2,
                   ppo_learning_rate=config.ppo_learning_rate / 2, ppo_kl_coef=config.ppo_kl_coef * 2,
                   grpo_learning_rate=config.grpo_learning_rate / 2, grpo_beta=config.grpo_beta * 2)


SAFER_RULE = "learning rate ÷2, KL anchor (β / kl_coef) ×2"


# ----------------------------------------------------------------------------- the loop, once
@dataclass
class Trained:
    """A policy the loop may generate from. ``policy``: the steps' handle (a directory in memory, an artifact on
    the database); ``health``: the gate's verdict and figures (None: not gated); ``name`` for the gate's
    messages; ``figures`` go on the round it was trained on, ``carried`` on the round it generates."""

    policy: Any
    health: dict | None = None
    name: str = ""
    figures: dict = field(default_factory=dict)
    carried: dict = field(default_factory=dict)


class LoopSteps(Protocol):
    """Where the loop runs: in memory (``MemorySteps``) or on database rows (``training.loop.DatabaseSteps``).
    ``rnd`` is the steps' handle of a round, ``reward_model`` of a reward model (None: none trained)."""

    def bootstrap(self) -> Trained: ...  # round 0's policy

    def generate(self, r: int, policy: Trained) -> Any: ...  # round r's K samples per prompt from ``policy``

    def measure(self, r: int, rnd: Any, policy: Trained) -> dict: ...  # round_metrics, the generator's health

    def label(self, r: int, rnd: Any) -> dict: ...  # rank the round's samples

    def train_reward(self, r: int, rnd: Any) -> tuple[Any, dict]: ...  # a reward model on all rankings so far

    def train_policy(self, r: int, rnd: Any, policy: Trained, reward_model: Any, config: LoopConfig, *,
                     retry: bool) -> Trained: ...  # policy r+1 from policy r with ``config``, its health checked

    def record(self, r: int, rnd: Any, figures: dict, previous: dict | None) -> dict: ...  # store; add "flags"


def gate_figures(health: dict) -> dict:
    """What a round keeps of each gate check (``gate_checks``; ``bench/health_margin.py`` reads them)."""
    return {k: health.get(k) for k in ("healthy", "eos_rate", "distinct_rate", "nll_rise", "kl_to_round0", "task_checks",
                                       "task_checks_round0", "examples")}


def train_gated(steps: LoopSteps, r: int, rnd: Any, policy: Trained, reward_model: Any, config: LoopConfig,
                log: Callable[[str], None]) -> tuple[Trained | None, dict]:
    """Policy r+1 through the health gate: on failure retry once with ``safer_config``; if the retry fails too,
    keep policy r. Returns (the next policy, None to keep policy r; the figures for round r)."""
    trained = steps.train_policy(r, rnd, policy, reward_model, config, retry=False)
    if trained.health is None:  # not gated
        return trained, trained.figures
    checks, first = [gate_figures(trained.health)], "; ".join(trained.health.get("reasons") or [])
    if trained.health.get("healthy") is not False:
        return trained, {**trained.figures, "gate": "passed", "gate_checks": checks}
    log(f"  round {r}: {trained.name} failed the health gate ({first}); retrying once with {SAFER_RULE}")
    retry = steps.train_policy(r, rnd, policy, reward_model, safer_config(config), retry=True)
    health = retry.health or {}
    checks.append(gate_figures(health))
    outcome = f"{trained.name} failed ({first}), retried with {SAFER_RULE}: {retry.name} "
    if health.get("healthy") is not False:
        return retry, {**retry.figures, "gate": outcome + "passed", "gate_checks": checks}
    log(f"  round {r}: the retry failed the health gate too; keeping round {r}'s policy for the next round")
    again = "; ".join(health.get("reasons") or [])
    return None, {**retry.figures, "gate": outcome + f"failed again ({again}); kept round {r}'s policy",
                  "gate_failed": True, "gate_checks": checks}


def loop_rounds(steps: LoopSteps, config: LoopConfig, *, log: Callable[[str], None] = print) -> list[dict]:
    """The loop: round 0's policy, then for r = 0..config.rounds generate round r from the newest policy and
    measure it; except after the last round, label it, train a reward model and (through ``train_gated``)
    policy r+1; record the round (its flags: ``training.ml.monitor``) and print its line. Returns each round's
    figures; a trained policy's ``carried`` figures (PPO/GRPO: ``rm_score_change``) go on the round it generates.
    """
    started = time.perf_counter()
    policy, history, carried = steps.bootstrap(), [], {}
    for r in range(config.rounds + 1):
        rnd = steps.generate(r, policy)
        figures = {"round": r, **steps.measure(r, rnd, policy), **carried}
        if history:  # the monitor compares each round with the one before
            figures["utility_change"] = figures["utility_mean"] - history[-1]["utility_mean"]
        if r < config.rounds:
            figures.update(steps.label(r, rnd))
            reward_model, reward_figures = steps.train_reward(r, rnd)
            figures.update(reward_figures)
            trained, gate = train_gated(steps, r, rnd, policy, reward_model, config, log)
            figures.update(gate)
            policy, carried = (policy, {}) if trained is None else (trained, trained.carried)
        figures = steps.record(r, rnd, figures, history[-1] if history else None)
        figures["elapsed_s"] = time.perf_counter() - started
        history.append(figures)
        log(format_round(figures))
    return history


# ----------------------------------------------------------------------------- the loop in memory
@dataclass
class MemoryRound:
    prompts: list[list[dict]]
    samples: list[list[GeneratedSample]]
    policy: tuple  # (model, tokenizer) that drew the samples: the gate's reference for the policy trained on them
    groups: list[RankedGroup] = field(default_factory=list)


class MemorySteps:
    """The loop's steps in memory (``run_loop``, the benches): policies and reward models are directories under
    ``workdir``, simulated labelers rank by ``utility`` + noise, the gate checks every new policy in process."""

    def __init__(self, config: LoopConfig, workdir: Path, *, utility: Utility, prompt_pool: list[list[dict]],
                 demonstrations, build_base: Callable[..., Path], log: Callable[[str], None],
                 task_checks: Mapping[str, Callable[[list[dict], str], bool]] | None = None):
        self.config, self.workdir, self.utility, self.prompt_pool = config, Path(workdir), utility, prompt_pool
        self.task_checks = dict(task_checks or {})  # name -> check(prompt_messages, reply) -> bool, on every gate
        self.demonstrations, self.build_base, self.log = demonstrations, build_base, log
        self.started, self.groups, self.round0_figures = time.perf_counter(), [], None

    def bootstrap(self) -> Trained:
        """SFT on the demonstrations; round 0's policy, gated against itself (its NLL is the gate's baseline)."""
        config = self.config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        policy_dir = build_sft_policy(self.workdir, config=config, demonstrations=self.demonstrations,
                                      build_base=self.build_base)
        self.log(f"[{time.perf_counter() - self.started:6.1f}s] SFT policy: {policy_dir}")
        self.round0 = load_policy(policy_dir)
        self.ptx_texts = ptx_texts_from(self.demonstrations, self.round0[1]) if config.ppo_ptx_coef > 0 else None
        self.held_out = round_prompts(self.prompt_pool, config.health_prompts, seed=config.seed,
                                      round_index=HELD_OUT_ROUND)
        health = None
        if config.health_gate:  # round 0 sampled once: its NLL and task-check rates serve every later gate
            from training.ml.health import round0_baseline

            baseline = round0_baseline(self.round0, self.held_out, health_thresholds(config), self.task_checks)
            health = self._gate(self.round0, reference=None, baseline=baseline)  # gated against itself
            self.round0_figures = {k: baseline[k] for k in ("nll_round0_baseline", "task_checks_round0",
                                                            "replies_round0")}  # not its EOS/distinct rates:
        return Trained(policy_dir, health, name="the SFT policy")  # later policies meet those floors as set

    def generate(self, r: int, policy: Trained) -> MemoryRound:
        prompts = round_prompts(self.prompt_pool, self.config.prompts_per_round, seed=self.config.seed, round_index=r)
        model = self.round0 if r == 0 else load_policy(policy.policy)
        samples = round_generate(policy.policy, prompts, config=self.config, round_index=r, model=model[0],
                                 tokenizer=model[1])
        return MemoryRound(prompts, samples, model)

    def measure(self, r: int, rnd: MemoryRound, policy: Trained) -> dict:
        figures = round_metrics(rnd.prompts, rnd.samples, utility=self.utility, round0=self.round0, policy=rnd.policy)
        if policy.health:
            figures["policy_health"] = {k: policy.health.get(k) for k in ("healthy", "reasons", "eos_rate", "distinct_rate",
                                                                            "nll_rise", "kl_to_round0", "task_checks",
                                                                            "task_checks_round0")}
        return figures

    def label(self, r: int, rnd: MemoryRound) -> dict:
        rnd.groups = round_label(rnd.prompts, rnd.samples, utility=self.utility, config=self.config, round_index=r)
        self.groups.extend(rnd.groups)
        return {}

    def train_reward(self, r: int, rnd: MemoryRound) -> tuple[str | None, dict]:
        if not self.config.train_reward_model:
            return None, {}
        rm_dir, accuracy = round_train_reward_model(self.groups, base_model=str(round0_dir(self.workdir)),
                                                    output_dir=self.workdir / f"rm{r}", config=self.config)
        return rm_dir, {"rm_accuracy": accuracy}

    def train_policy(self, r: int, rnd: MemoryRound, policy: Trained, reward_model: str | None, config: LoopConfig,
                     *, retry: bool) -> Trained:
        tag = f"{r}-retry" if retry else r  # the run's directory: workdir / f"{optimizer}{tag}"
        summary, figures = round_train_policy(policy.policy, rnd.prompts, rnd.groups, reward_model_dir=reward_model,
                                              workdir=self.workdir, r=tag, config=config, ptx_texts=self.ptx_texts)
        health = (self._gate(load_policy(summary["policy_dir"]), reference=rnd.policy, baseline=self.round0_figures)
                  if self.config.health_gate else None)
        mine = {k: v for k, v in figures.items() if k.startswith("dpo_")}  # the rest: the next round's
        return Trained(summary["policy_dir"], health, name=f"the {config.optimizer} policy ({config.optimizer}{tag})",
                       figures=mine, carried={k: v for k, v in figures.items() if k not in mine})

    def record(self, r: int, rnd: MemoryRound, figures: dict, previous: dict | None) -> dict:
        return {**figures, "flags": round_flags(previous, figures)}

    def _gate(self, policy: tuple, *, reference, baseline: dict) -> dict:
        from training.ml.health import policy_health

        return policy_health(policy, self.round0, self.held_out, thresholds=health_thresholds(self.config),
                             reference=reference, baseline=baseline, task_checks=self.task_checks)


def run_loop(config: LoopConfig, workdir: Path, *, utility: Utility, prompt_pool: list[list[dict]],
             demonstrations, build_base: Callable[..., Path], log: Callable[[str], None] = print,
             task_checks: Mapping[str, Callable[[list[dict], str], bool]] | None = None) -> list[dict]:
    """SFT, then rounds 0..config.rounds in memory (``loop_rounds`` on ``MemorySteps``); returns one figures
    dict per round (round 0 = SFT policy). After a PPO/GRPO round, the next round's dict holds the reward
    model's score trend during the policy run (``rm_score_change``) and the utility change it caused
    (``utility_change``), which the round's line prints; ``flags`` are the monitor's and the gate's.
    ``task_checks`` (name -> check, as ``policy_health`` takes) go to every gate call: round 0's and each
    policy's; a check fails a policy when its pass rate is under ``min_task_pass_rate`` and under round 0's rate
    on the same prompts by more than ``task_check_z`` standard errors (``health.task_check_reason``, as on the
    database); round 0's own gate compares it with nothing, so the floor alone applies there.
    """
    steps = MemorySteps(config, Path(workdir), utility=utility, prompt_pool=prompt_pool,
                        demonstrations=demonstrations, build_base=build_base, log=log, task_checks=task_checks)
    return loop_rounds(steps, config, log=log)


def round0_dir(workdir: Path) -> Path:
    return Path(workdir) / "sft" / "policy"
