"""Tiny local models for offline demos and tests: no hub, no download.

``build_tokenizer`` trains a byte-level BPE tokenizer on the project's own texts with the ``tokenizers``
library; ``build_tiny_causal_lm`` and ``build_tiny_reward_model`` save randomly initialised Llama-style
models of a few hundred thousand parameters. Everything is saved with ``save_pretrained`` so that the
``Auto*`` classes of ``transformers`` load it back like any real model directory.

CLI::

    python -m training.ml.tiny_models --texts corpus.txt --out models/tiny
    # -> models/tiny/tokenizer, models/tiny/causal_lm, models/tiny/reward_model
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from training.ml.types import RankedGroup
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# A minimal chat format: "<s><|user|>\n...</s>\n<|assistant|>\n...</s>\n". The role markers are ordinary
# text (the tokenizer learns them as merges); the generation prompt ends with "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and save it (save_pretrained) into ``out_dir``.

    Byte-level means every string is encodable (no unknown characters); ``vocab_size`` counts the 256
    byte symbols, the 4 special tokens and the learned merges.
    """
    if vocab_size < 256 + 4:
        raise ValueError(f"vocab_size must be at least 260 (256 bytes + 4 special tokens), got {vocab_size}")
    texts = list(texts)
    role_markers = ["<|user|>\n", "<|assistant|>\n", "<|system|>\n"]  # so chat turns become few tokens
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],  # pad=0, bos=1, eos=2, unk=3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts + role_markers * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        truncation_side="left",  # keep the end of long conversations
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _tiny_config(tokenizer, *, hidden: int, layers: int, heads: int, max_positions: int, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )


def build_tiny_causal_lm(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
    initializer_range: float | None = None,
) -> Path:
    """Save a randomly initialised Llama-style causal LM (and the tokenizer) into ``out_dir``; return it.

    The weights are drawn with std ``initializer_range``, by default ``hidden ** -0.5`` (0.125 at width 64).
    Llama's own 0.02 is sized for widths in the thousands; at width 64 it leaves attention nearly uniform for
    hundreds of steps, and the demo's SFT policy never learnt to use its prompt (docs/loop.md, "Round 0 ignored
    its prompt").
    """
    torch.manual_seed(seed)
    config = _tiny_config(tokenizer, hidden=hidden, layers=layers, heads=heads, max_positions=max_positions,
                          initializer_range=hidden ** -0.5 if initializer_range is None else initializer_range)
    model = AutoModelForCausalLM.from_config(config)
    return _save(model, tokenizer, out_dir)


def build_tiny_reward_model(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised Llama-style scalar reward model (one output, pad_token_id set)."""
    torch.manual_seed(seed)
    config = _tiny_config(
        tokenizer, hidden=hidden, layers=layers, heads=heads, max_positions=max_positions, num_labels=1
    )
    model = AutoModelForSequenceClassification.from_config(config)
    return _save(model, tokenizer, out_dir)


SYNTHETIC_WORDS = "the a cat dog sun rain tree river blue green small big runs sits sings".split()


def synthetic_groups(
    num_prompts: int, k: int, *, seed: int = 0, good: str = "sunny", strict: bool = False
) -> list[RankedGroup]:
    """Ranked groups with a learnable preference: a reply ranks higher the more often it says ``good``.

    Replies are 4-10 random filler words with 0-2 copies of ``good`` inserted; equal counts form one tier
    (a tie, no pair). With ``strict`` the shorter reply wins among equal counts, so rankings are total
    orders of K tiers (C(K,2) pairs) unless two replies also have the same length.
    For tests and benchmarks of reward models.
    """
    rng = random.Random(seed)
    groups = []
    for prompt_id in range(num_prompts):
        replies, counts = [], []
        for _ in range(k):
            words = rng.choices(SYNTHETIC_WORDS, k=rng.randint(4, 10))
            count = rng.randint(0, 2)
            for _ in range(count):
                words.insert(rng.randrange(len(words) + 1), good)
            replies.append(" ".join(words))
            counts.append((count, -len(words)) if strict else count)
        tiers = [[i for i in range(k) if counts[i] == c] for c in sorted(set(counts), reverse=True)]
        messages = [{"role": "user", "content": f"Describe day {prompt_id}."}]
        groups.append(RankedGroup(prompt_id=prompt_id, messages=messages, responses=replies, rankings=[tiers]))
    return groups


def _save(model, tokenizer, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tokenizer and tiny models from a text file.")
    parser.add_argument("--texts", required=True, help="UTF-8 text file; each line is one training text")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-positions", type=int, default=256)
    args = parser.parse_args(argv)
    lines = [line for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out)
    tokenizer = build_tokenizer(lines, out / "tokenizer", vocab_size=args.vocab_size)
    sizes = dict(hidden=args.hidden, layers=args.layers, heads=args.heads, max_positions=args.max_positions)
    lm = build_tiny_causal_lm(out / "causal_lm", tokenizer, **sizes)
    rm = build_tiny_reward_model(out / "reward_model", tokenizer, **sizes)
    print(f"tokenizer: {out / 'tokenizer'} ({len(tokenizer)} tokens)\ncausal LM: {lm}\nreward model: {rm}")


if __name__ == "__main__":
    main()
