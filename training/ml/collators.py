"""Collators: lists of encoded examples -> padded tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.ml.data import EncodedGroup, pad_right  # noqa: F401  (pad_right: also imported from here)
from training.ml.prefix_sharing import pack_groups


@dataclass
class RankedGroupCollator:
    """Flattens B prompts × K responses into one batch of N = ΣK sequences, plus the pair index tensors.

    Each response is scored once; ``chosen``/``rejected`` index rows of the batch, so all C(K,2) pairs of a
    prompt reuse its K scores (InstructGPT's recipe).

    >>> a = EncodedGroup(prompt_id=1, input_ids=[[5, 6, 7], [5, 8]], pairs=[(0, 1, 1, 1.0)], truncated=0)
    >>> b = EncodedGroup(prompt_id=2, input_ids=[[9], [9, 4], [9, 3]],
    ...                  pairs=[(2, 0, 1, 1.0), (2, 1, 2, 0.5)], truncated=0)
    >>> batch = RankedGroupCollator(pad_token_id=0)([a, b])
    >>> batch["input_ids"]
    tensor([[5, 6, 7],
            [5, 8, 0],
            [9, 0, 0],
            [9, 4, 0],
            [9, 3, 0]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1],
            [1, 1, 0],
            [1, 0, 0],
            [1, 1, 0],
            [1, 1, 0]])
    >>> batch["chosen"], batch["rejected"]
    (tensor([0, 4, 4]), tensor([1, 2, 3]))
    >>> batch["margins"], batch["weights"]
    (tensor([1., 1., 2.]), tensor([1.0000, 1.0000, 0.5000]))
    """

    pad_token_id: int
    share_prefix: bool = False  # one packed row per group instead (``training.ml.prefix_sharing.pack_groups``)

    def __call__(self, groups: list[EncodedGroup]) -> dict[str, torch.Tensor]:
        sequences, chosen, rejected, margins, weights = [], [], [], [], []
        for group in groups:
            offset = len(sequences)  # row of this group's first response
            sequences.extend(group.input_ids)
            for w, l, m, weight in group.pairs:
                chosen.append(offset + w)
                rejected.append(offset + l)
                margins.append(float(m))
                weights.append(float(weight))
        pairs = {
            "chosen": torch.tensor(chosen, dtype=torch.long),  # (P,)
            "rejected": torch.tensor(rejected, dtype=torch.long),  # (P,)
            "margins": torch.tensor(margins, dtype=torch.float),  # (P,) tier distance
            "weights": torch.tensor(weights, dtype=torch.float),  # (P,)
        }
        if self.share_prefix:  # (B, L) rows [prefix, suffix_1, …, suffix_K] and the (N,) reward positions
            return {**pack_groups([g.input_ids for g in groups], self.pad_token_id), **pairs}
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)  # (N, T), (N, T)
        return {"input_ids": input_ids, "attention_mask": attention_mask, **pairs}
