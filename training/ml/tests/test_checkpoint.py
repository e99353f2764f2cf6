"""Checkpoints round-trip model, optimizer, scheduler and RNG exactly; writes are atomic; old ones pruned."""
import os
import random
import stat

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

from training.ml.checkpoint import (
    atomic_save_dir,
    checkpoint_latest,
    checkpoint_list,
    checkpoint_load,
    checkpoint_save,
)
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer


@pytest.fixture
def model_dir(tmp_path):
    tokenizer = build_tokenizer(["some text to learn from"] * 5, tmp_path / "tok", vocab_size=280)
    return build_tiny_reward_model(tmp_path / "rm", tokenizer, hidden=16, layers=1, heads=2)


def _train_one_step(model, optimizer, scheduler):
    ids = torch.randint(4, 200, (3, 5))
    model(input_ids=ids).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _fresh(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    return model, optimizer, scheduler


def test_round_trip_restores_everything(model_dir, tmp_path):
    model, optimizer, scheduler = _fresh(model_dir)
    _train_one_step(model, optimizer, scheduler)
    path = checkpoint_save(root=tmp_path / "ck", step=1, model=model, optimizer=optimizer, scheduler=scheduler,
                           extra={"note": "x"})
    expected_draws = (torch.rand(3), random.random())
    _train_one_step(model, optimizer, scheduler)  # the original goes on one more step
    expected_params = [p.detach().clone() for p in model.parameters()]

    other, other_optimizer, other_scheduler = _fresh(model_dir)
    state = checkpoint_load(path, model=other, optimizer=other_optimizer, scheduler=other_scheduler)
    assert state == {"step": 1, "extra": {"note": "x"}}
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    _train_one_step(other, other_optimizer, other_scheduler)
    assert other_scheduler.last_epoch == scheduler.last_epoch
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), expected_params))


def test_keeps_only_the_newest_and_ignores_temporaries(model_dir, tmp_path):
    model, optimizer, scheduler = _fresh(model_dir)
    root = tmp_path / "ck"
    for step in (2, 4, 6):
        checkpoint_save(root=root, step=step, model=model, optimizer=optimizer, scheduler=scheduler, keep=2)
    (root / ".tmp-step-00000008-abc").mkdir()  # a writer killed mid-save leaves only a hidden temp dir
    (root / "step-00000009").mkdir()  # ... or a directory without state.pt is never taken for complete
    assert [p.name for p in checkpoint_list(root)] == ["step-00000004", "step-00000006"]
    assert checkpoint_latest(root).name == "step-00000006"
    assert checkpoint_latest(tmp_path / "none") is None


def test_atomic_save_dir_leaves_the_old_copy_when_writing_fails(tmp_path):
    target = tmp_path / "out"
    atomic_save_dir(target, lambda tmp: (tmp / "a.txt").write_text("old"))

    def broken(tmp):
        (tmp / "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save_dir(target, broken)
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    atomic_save_dir(target, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_atomic_save_dir_gives_the_directory_the_mode_of_a_plain_mkdir(tmp_path):
    """Not mkdtemp's 0700: another uid (the web, a worker on another machine) reads what a worker saved."""
    previous = os.umask(0o022)  # the usual one, whatever this process was started with
    try:
        plain = tmp_path / "plain"
        plain.mkdir()
        saved = atomic_save_dir(tmp_path / "saved", lambda tmp: (tmp / "a.txt").write_text("x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(saved.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o755


def test_mismatched_weights_are_refused(model_dir, tmp_path):
    model, optimizer, scheduler = _fresh(model_dir)
    path = checkpoint_save(root=tmp_path / "ck", step=1, model=model, optimizer=optimizer, scheduler=scheduler)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bigger = build_tiny_reward_model(tmp_path / "big", tokenizer, hidden=16, layers=2, heads=2)
    with pytest.raises(RuntimeError, match="does not match"):
        checkpoint_load(path, model=AutoModelForSequenceClassification.from_pretrained(bigger))
