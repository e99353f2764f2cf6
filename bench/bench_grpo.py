"""GRPO: ours (training/ml/trainers/grpo.py) against TRL's GRPOTrainer, same tiny model, prompts and reward.

Both run in this process on the CPU from the same randomly initialised tiny Llama, with the same G, prompts
per step, learning rate, β, ε, max new tokens, sampling (temperature 1, top-p 1, no top-k) and the same
rule-based reward, with the per-sequence loss of eq. 3 (TRL: loss_type="grpo"). Printed per trainer: steady
steps per second (step 2 to the last, so start-up is excluded), end-to-end seconds, and the reward gain
(mean reward of the last quarter of the steps minus the first quarter), each over ``--seeds`` seeds.

    .venv/bin/python bench/bench_grpo.py --steps 16 --seeds 3 --threads 1
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from training.ml.config import GRPOConfig  # noqa: E402
from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer  # noqa: E402
from training.ml.trainers.grpo import train_grpo  # noqa: E402
from training.ml.types import NullHooks  # noqa: E402

WORDS = ["the cat", "a dog", "count", "apples please", "the park", "sat on", "a river", "blue sky"]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "count the apples please", "a tall tree by a river"] * 20


def vowel_share(prompt_messages, response_text: str) -> float:
    """Toy verifiable reward: share of the response's characters that are vowels."""
    return sum(c in "aeiou" for c in response_text) / max(len(response_text), 1)


class TimedHooks(NullHooks):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_step(self, step, total, metrics) -> None:
        super().on_step(step, total, metrics)
        self.times.append(time.perf_counter())


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def run_ours(policy_dir: str, prompts, args, seed: int, out: str) -> tuple[list[float], list[float], float]:
    config = GRPOConfig(base_model=policy_dir, max_steps=args.steps, batch_size=args.prompts_per_step,
                        samples_per_prompt=args.G, max_new_tokens=args.max_new_tokens, learning_rate=args.lr,
                        beta=args.beta, lr_scheduler="constant", checkpoint_every=10**6, seed=seed)
    hooks = TimedHooks()
    start = time.perf_counter()
    train_grpo(config, prompts, policy_dir=policy_dir, output_dir=out, reward_fn=vowel_share, hooks=hooks, resume=False)
    return [m["reward"] for _, m in hooks.steps], hooks.times, time.perf_counter() - start


def run_trl(policy_dir: str, prompts, args, seed: int, out: str) -> tuple[list[float], list[float], float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    def reward(prompts, completions, **kwargs) -> list[float]:  # conversational: completions are message lists
        return [vowel_share(p, c[0]["content"].strip()) for p, c in zip(prompts, completions)]

    config = TRLGRPOConfig(
        output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.prompts_per_step * args.G,
        num_generations=args.G, max_completion_length=args.max_new_tokens, learning_rate=args.lr, beta=args.beta,
        epsilon=0.2, loss_type="grpo", scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=seed, disable_tqdm=True, bf16=False,
        dataloader_num_workers=0,
    )
    start = time.perf_counter()
    dataset = Dataset.from_list([{"prompt": p} for p in prompts] * (args.steps + 1))
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    clock = StepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its log dict every step
        trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return rewards, clock.times, time.perf_counter() - start


def summarise(rewards: list[float], times: list[float], seconds: float) -> dict[str, float]:
    q = max(1, len(rewards) // 4)
    return {"steps_per_s": (len(times) - 1) / (times[-1] - times[0]), "seconds": seconds,
            "reward_first": statistics.mean(rewards[:q]), "reward_last": statistics.mean(rewards[-q:]),
            "gain": statistics.mean(rewards[-q:]) - statistics.mean(rewards[:q])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    prompts = [[{"role": "user", "content": w}] for w in WORDS]
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(TEXTS, Path(tmp) / "tok", vocab_size=300)
        policy_dir = str(build_tiny_causal_lm(Path(tmp) / "policy", tokenizer, hidden=64, layers=2, heads=4))
        for seed in range(args.seeds):
            for name, run in (("ours", run_ours), ("trl", run_trl)):
                rewards, times, seconds = run(policy_dir, prompts, args, seed, str(Path(tmp) / f"{name}{seed}"))
                results[name].append(summarise(rewards, times, seconds))
                r = results[name][-1]
                print(f"seed {seed} {name:4s}: {r['steps_per_s']:.2f} steps/s, {r['seconds']:.1f} s end to end, "
                      f"reward {r['reward_first']:.3f} -> {r['reward_last']:.3f} (gain {r['gain']:+.3f})", flush=True)
    print(f"\n{args.steps} steps × {args.prompts_per_step} prompts × G={args.G}, {args.max_new_tokens} new tokens, "
          f"lr {args.lr}, β {args.beta}, {args.threads} threads, {args.seeds} seeds (mean ± sd)")
    for name in ("ours", "trl"):
        rows = results[name]
        sps = [r["steps_per_s"] for r in rows]
        gain = [r["gain"] for r in rows]
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        print(f"{name:4s}: {statistics.mean(sps):.2f} ± {sd(sps):.2f} steps/s, reward gain "
              f"{statistics.mean(gain):+.3f} ± {sd(gain):.3f}, {statistics.mean(r['seconds'] for r in rows):.1f} s end to end")
    ratio = statistics.mean(r["steps_per_s"] for r in results["ours"]) / statistics.mean(r["steps_per_s"] for r in results["trl"])
    print(f"speed ratio ours/TRL: {ratio:.2f}×")


if __name__ == "__main__":
    main()
