"""The demo task: its documented utility, its deterministic data files and its tiny model."""
import statistics

import pytest

from training.ml import demo_task
from training.ml.demo_task import demo_prompt, demo_utility


@pytest.mark.parametrize("response, expected", [
    ("the warm harbor glowed.", 1.5),  # bright, on topic
    ("the warm river glowed.", 1.0),  # bright, off topic
    ("the cold harbor slept.", -0.5),  # dark, on topic
    ("the warm river glowed and the bleak tower slept.", 0.0),  # one bright, one dark
    ("the kind road moved and the calm hill grew and the grim harbor faded.", 1 / 3 + 0.5),
    ("the warm river glowed", -1.0),  # no full stop
    ("the warm ocean glowed.", -1.0),  # unknown noun
    ("the warm river glowed and the warm river glowed and the warm river glowed and the warm river glowed.", -1.0),
    ("", -1.0),
])
def test_demo_utility(response, expected):
    assert demo_utility(demo_prompt("harbor"), response) == pytest.approx(expected)


def test_demo_utility_without_a_recognisable_prompt_gives_no_topic_bonus():
    assert demo_utility([{"role": "user", "content": "hello"}], "the warm harbor glowed.") == 1.0


def test_shipped_data_files_are_the_deterministic_ones(tmp_path):
    demo_task.write_demo_data(tmp_path)
    for name in ("demonstrations.jsonl", "prompts.jsonl"):
        assert (tmp_path / name).read_text() == (demo_task.DATA_DIR / name).read_text(), name


def test_demonstrations_are_well_formed_and_leave_room_to_improve():
    demos = demo_task.load_demonstrations()
    assert len(demos) == 4000
    assert all(demo_task.parse_response(r) is not None for _, r in demos)
    utilities = [demo_utility(m, r) for m, r in demos]
    assert -0.1 < statistics.fmean(utilities) < 0.4  # bright and dark equally likely; topic bonus 30%+
    assert max(utilities) == 1.5
    assert len(demo_task.load_prompts()) == len(demo_task.NOUNS)


def test_demo_tokenizer_has_one_token_per_word(tmp_path):
    from transformers import AutoTokenizer

    base = demo_task.build_demo_base(tmp_path, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    for word in demo_task.BRIGHT + demo_task.DARK + demo_task.NOUNS + demo_task.VERBS:
        assert len(tokenizer.tokenize(" " + word)) == 1, word
