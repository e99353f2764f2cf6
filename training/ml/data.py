"""From RankedGroups to token ids: render conversations, tokenise, truncate from the left, split by prompt.

A scored sequence is the conversation so far plus one candidate reply. When it is longer than
``max_length`` the START of the conversation is cut (the reply and the turns right before it matter most
to its score); if the reply alone is too long, its start is cut too. Nothing is dropped silently: every
truncated sequence is counted and the count is reported with the run.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from training.ml.types import RankedGroup

ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class EncodedGroup:
    """One prompt's K token sequences (each ≤ max_length) and every pair from its rankings."""

    prompt_id: int
    input_ids: list[list[int]]  # K sequences, special tokens included
    pairs: list[tuple[int, int, int, float]]  # (chosen, rejected, tier distance, weight) indices into input_ids
    truncated: int  # how many of the K sequences were cut to fit


def render_plain(messages: list[dict]) -> str:
    """A readable transcript for tokenizers without a chat template ("User: …\\n\\nAssistant: …")."""
    return "".join(f"{ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}\n\n" for m in messages)


def render_prompt_and_reply(tokenizer, messages: list[dict], reply: str) -> tuple[str, str]:
    """(conversation text ending where the reply starts, reply text) in the tokenizer's chat format."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return "", full  # a template that rewrites earlier turns: score the whole text, still left-truncated
    return render_plain(messages) + "Assistant: ", reply


def fit_to_length(prompt_ids: list[int], reply_ids: list[int], budget: int) -> tuple[list[int], bool]:
    """Join prompt and reply into ≤ budget tokens keeping the END: cut the prompt's start, then the reply's.

    >>> fit_to_length([1, 2, 3], [7, 8], 4)
    ([2, 3, 7, 8], True)
    >>> fit_to_length([1, 2], [7, 8, 9], 2)
    ([8, 9], True)
    >>> fit_to_length([1], [7], 4)
    ([1, 7], False)
    """
    ids = prompt_ids + reply_ids
    if len(ids) <= budget:
        return ids, False
    return ids[len(ids) - budget:], True


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer adds around one sequence, e.g. ([CLS], [SEP]) for BERT."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    wrapped = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(wrapped) - len(bare) + 1):
        if wrapped[start:start + len(bare)] == bare:
            return wrapped[:start], wrapped[start + len(bare):]
    raise ValueError(f"cannot tell which special tokens {type(tokenizer).__name__} adds: {wrapped} vs {bare}")


def encode_group(tokenizer, group: RankedGroup, *, max_length: int, use_weights: bool = True) -> EncodedGroup:
    """Tokenise the K sequences of one prompt (the conversation is tokenised once and shared)."""
    prefix, suffix = special_tokens_around(tokenizer)
    budget = max_length - len(prefix) - len(suffix)  # room left after [CLS]/[SEP] and the like
    sequences, truncated = [], 0
    prompt_cache: dict[str, list[int]] = {}
    for reply in group.responses:
        prompt_text, reply_text = render_prompt_and_reply(tokenizer, group.messages, reply)
        if prompt_text not in prompt_cache:
            prompt_cache[prompt_text] = tokenizer.encode(prompt_text, add_special_tokens=False)
        reply_ids = tokenizer.encode(reply_text, add_special_tokens=False)
        ids, cut = fit_to_length(prompt_cache[prompt_text], reply_ids, budget)
        sequences.append(prefix + ids + suffix)
        truncated += cut
    pairs = [(w, l, m, weight if use_weights else 1.0) for w, l, m, weight in group.pairs()]
    return EncodedGroup(prompt_id=group.prompt_id, input_ids=sequences, pairs=pairs, truncated=truncated)


def encode_groups(
    tokenizer, groups: list[RankedGroup], *, max_length: int, use_weights: bool = True
) -> tuple[list[EncodedGroup], dict[str, int]]:
    """Encode every group; groups that give no pair (all tied) are kept out of training but counted.

    Returns (encoded groups with at least one pair, counts) with counts = groups, sequences, truncated,
    pairs, groups_without_pairs.
    """
    encoded = [encode_group(tokenizer, g, max_length=max_length, use_weights=use_weights) for g in groups]
    kept = [e for e in encoded if e.pairs]
    counts = {
        "groups": len(kept),
        "sequences": sum(len(e.input_ids) for e in kept),
        "truncated": sum(e.truncated for e in encoded),
        "pairs": sum(len(e.pairs) for e in kept),
        "groups_without_pairs": len(encoded) - len(kept),
    }
    return kept, counts


def split_by_prompt(
    groups: list[RankedGroup], eval_fraction: float, seed: int
) -> tuple[list[RankedGroup], list[RankedGroup]]:
    """Hold out a share of PROMPTS (never of pairs): every group of a prompt lands on the same side.

    Deterministic for a seed. With eval_fraction > 0 and at least two prompts, both sides are non-empty.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    prompt_ids = sorted({g.prompt_id for g in groups})
    random.Random(seed).shuffle(prompt_ids)
    n_eval = round(len(prompt_ids) * eval_fraction)
    if eval_fraction > 0 and len(prompt_ids) >= 2:
        n_eval = min(max(n_eval, 1), len(prompt_ids) - 1)
    held_out = set(prompt_ids[:n_eval])
    train = [g for g in groups if g.prompt_id not in held_out]
    evaluation = [g for g in groups if g.prompt_id in held_out]
    return train, evaluation


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(input_ids, attention_mask), both (N, T) with T the longest sequence; padding on the right."""
    import torch  # here, so that encoding text needs no torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask
