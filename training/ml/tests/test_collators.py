"""The ranked-group collator pads right and indexes pairs into the flattened batch."""
import doctest

import torch

from training.ml import collators
from training.ml.collators import RankedGroupCollator, pad_right
from training.ml.data import EncodedGroup


def test_doctests():
    assert doctest.testmod(collators).failed == 0


def test_pairs_index_their_own_group_rows():
    groups = [
        EncodedGroup(prompt_id=i, input_ids=[[i, 1]] * k, pairs=[(k - 1, 0, 1, 1.0)], truncated=0)
        for i, k in ((7, 2), (8, 4), (9, 3))
    ]
    batch = RankedGroupCollator(pad_token_id=0)(groups)
    assert batch["input_ids"].shape == (9, 2)
    assert batch["chosen"].tolist() == [1, 5, 8] and batch["rejected"].tolist() == [0, 2, 6]
    assert batch["input_ids"][batch["chosen"], 0].tolist() == [7, 8, 9]


def test_pad_right_uses_the_pad_id_and_masks_it():
    ids, mask = pad_right([[3], [4, 5, 6]], pad_token_id=99)
    assert ids.tolist() == [[3, 99, 99], [4, 5, 6]]
    assert torch.equal(mask, torch.tensor([[1, 0, 0], [1, 1, 1]]))
