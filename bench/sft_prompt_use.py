"""Does round 0's SFT policy use its prompt? The demo task's demonstrations put the prompt's noun first in about a
third of the replies; a policy that learnt them should too. For each ``--steps`` × ``--seeds``, builds round 0's
policy as the loop does (``training.ml.loop.build_sft_policy``), samples 4 replies for each of 128 prompts (8 per
noun) and prints the share whose first noun is the prompt's (chance: 1/16), and how much the prompt moves the
log-prob of one fixed reply (mean over the 16 replies "the happy <noun> waited." of max − min over the 16
prompts, in nats). Measured figures: docs/loop.md ("GRPO and PPO, 3 seeds on all 8 utilities").

    TRANSFORMERS_VERBOSITY=error .venv/bin/python bench/sft_prompt_use.py --steps 400 1200 2400 --seeds 0 1
    # the diagnosis: Llama's std 0.02 against the tiny models' hidden ** -0.5, demonstrations that always copy
    TRANSFORMERS_VERBOSITY=error .venv/bin/python bench/sft_prompt_use.py --steps 400 --init-std 0.02 0.125 --topic-rate 1.0
"""
from __future__ import annotations

import argparse
import functools
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml import demo_task  # noqa: E402
from training.ml.generation import generate_samples, load_policy, sequence_logprobs  # noqa: E402
from training.ml.loop import LoopConfig, build_sft_policy  # noqa: E402


def first_noun_is_topic(prompt: list[dict], text: str) -> bool:
    words = text.split()
    return len(words) > 2 and words[2].rstrip(".") == demo_task.prompt_noun(prompt)


def prompt_effect_nats(policy_dir: str) -> float:
    model, tokenizer = load_policy(policy_dir)
    nouns = demo_task.NOUNS
    replies = [f"the happy {noun} waited." for noun in nouns]
    rows = torch.stack([sequence_logprobs(model, tokenizer, [demo_task.demo_prompt(noun)] * len(nouns), replies)
                        for noun in nouns])  # (prompt, reply)
    return (rows.max(0).values - rows.min(0).values).mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[400])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--init-std", type=float, nargs="+", default=[None],
                        help="the base model's initializer_range (default: the tiny models' hidden ** -0.5)")
    parser.add_argument("--topic-rate", type=float, default=None,
                        help="demonstrations drawn afresh (4,000, seed 0) with this share of topic-first replies "
                             "instead of the stored ones (whose rate is demo_task.SFT_TOPIC_RATE)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.topic_rate is None:
        demonstrations = demo_task.load_demonstrations()
    else:
        rng = random.Random(0)
        demonstrations = [(demo_task.demo_prompt(topic), demo_task.demonstration_text(rng, topic, args.topic_rate))
                          for topic in (rng.choice(demo_task.NOUNS) for _ in range(4000))]
    topic_first = sum(first_noun_is_topic(m, r) for m, r in demonstrations)
    print(f"demonstrations: first noun is the prompt's in {topic_first}/{len(demonstrations)} = "
          f"{topic_first / len(demonstrations):.3f} (chance {1 / len(demo_task.NOUNS):.4f})", flush=True)
    prompts = [demo_task.demo_prompt(noun) for noun in demo_task.NOUNS for _ in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        for init_std, steps, seed in ((i, st, se) for i in args.init_std for st in args.steps for se in args.seeds):
            started = time.perf_counter()
            build_base = functools.partial(demo_task.build_demo_base, initializer_range=init_std)
            policy_dir = build_sft_policy(Path(tmp) / f"{init_std}-{steps}-{seed}",
                                          config=LoopConfig(seed=seed, sft_steps=steps),
                                          demonstrations=demonstrations, build_base=build_base)
            sft_seconds = time.perf_counter() - started
            samples = generate_samples(policy_dir, prompts, k=4, seed=7)
            hits = sum(first_noun_is_topic(p, s.text) for p, group in zip(prompts, samples) for s in group)
            init = "hidden^-0.5" if init_std is None else f"{init_std:g}"
            print(f"init std {init} sft_steps {steps:5d} seed {seed}: first noun is the prompt's in "
                  f"{hits}/{4 * len(prompts)} = "
                  f"{hits / (4 * len(prompts)):.3f}; prompt moves a reply's log-prob by "
                  f"{prompt_effect_nats(policy_dir):.4f} nats; SFT {sft_seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
