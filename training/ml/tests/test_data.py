"""Rendering, left truncation that keeps the end (and is counted), and the split by prompt."""
import doctest

import pytest

from training.ml import data
from training.ml.data import encode_group, encode_groups, render_prompt_and_reply, split_by_prompt
from training.ml.tiny_models import build_tokenizer, synthetic_groups
from training.ml.types import RankedGroup


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["Describe the long day.", "it was sunny and long", "the end of the story"] * 10
    return build_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


def test_doctests():
    assert doctest.testmod(data).failed == 0


def test_chat_template_splits_prompt_and_reply(tokenizer):
    prompt, reply = render_prompt_and_reply(tokenizer, [{"role": "user", "content": "Hi?"}], "Hello.")
    assert prompt == "<s><|user|>\nHi?</s>\n<|assistant|>\n" and reply == "Hello.</s>\n"


def test_plain_rendering_without_template(tokenizer):
    class NoTemplate:
        chat_template = None

    prompt, reply = render_prompt_and_reply(NoTemplate(), [{"role": "user", "content": "Hi?"}], "Hello.")
    assert prompt == "User: Hi?\n\nAssistant: " and reply == "Hello."


def test_long_conversation_keeps_its_end_and_is_counted(tokenizer):
    long_turns = [{"role": "user", "content": "the long day " * 40 + "MARKER"}]
    group = RankedGroup(prompt_id=1, messages=long_turns, responses=["the end", "it was sunny"], rankings=[[[0], [1]]])
    encoded = encode_group(tokenizer, group, max_length=24)
    assert encoded.truncated == 2
    for ids, reply in zip(encoded.input_ids, group.responses):
        assert len(ids) == 24
        assert tokenizer.decode(ids).endswith(reply + "</s>\n")  # the reply survives, the start was cut
    short = encode_group(tokenizer, group, max_length=1024)
    assert short.truncated == 0 and tokenizer.decode(short.input_ids[0]).startswith("<s><|user|>")


def test_encode_groups_counts_truncation_and_all_tie_groups(tokenizer):
    tied = RankedGroup(prompt_id=99, messages=[{"role": "user", "content": "x"}], responses=["a", "b"], rankings=[[[0, 1]]])
    groups = synthetic_groups(5, 3, seed=0) + [tied]
    kept, counts = encode_groups(tokenizer, groups, max_length=12)
    assert 99 not in {g.prompt_id for g in kept}
    assert counts["groups_without_pairs"] >= 1 and counts["groups"] == len(kept)
    assert counts["truncated"] > 0 and counts["pairs"] == sum(len(g.pairs) for g in kept)


def test_unweighted_encoding_sets_weights_to_one(tokenizer):
    group = RankedGroup(1, [{"role": "user", "content": "q"}], ["a", "b"], [[[0], [1]], [[1], [0]]], weights=[2.0, 0.5])
    assert [p[3] for p in encode_group(tokenizer, group, max_length=32).pairs] == [2.0, 0.5]
    assert [p[3] for p in encode_group(tokenizer, group, max_length=32, use_weights=False).pairs] == [1.0, 1.0]


def test_split_by_prompt_never_splits_a_prompt():
    groups = synthetic_groups(30, 2, seed=0)
    groups += [RankedGroup(g.prompt_id, g.messages, g.responses, [[[1], [0]]]) for g in groups[:10]]  # 2nd labeler
    train, held_out = split_by_prompt(groups, 0.2, seed=3)
    train_ids, eval_ids = {g.prompt_id for g in train}, {g.prompt_id for g in held_out}
    assert not train_ids & eval_ids and len(eval_ids) == 6 and len(train) + len(held_out) == len(groups)
    assert split_by_prompt(groups, 0.2, seed=3) == (train, held_out)
    assert split_by_prompt(groups, 0.2, seed=4) != (train, held_out)


def test_split_keeps_both_sides_non_empty():
    train, held_out = split_by_prompt(synthetic_groups(2, 2), 0.01, seed=0)
    assert len(train) == 1 and len(held_out) == 1
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_prompt([], 1.0, seed=0)
