"""SFT: loss on response tokens falls, parameters change, LoRA saves an adapter the generator can load."""
import pytest
import torch

from training.ml import demo_task
from training.ml.config import SFTConfig
from training.ml.generation import generate_samples, load_policy, mean_token_nll
from training.ml.trainers.sft import batch_indices, train_sft
from training.ml.types import NullHooks


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return str(demo_task.build_demo_base(tmp_path_factory.mktemp("sft"), seed=0))


def test_batch_indices_cover_each_epoch_once():
    epoch = [i for step in range(4) for i in batch_indices(10, 3, step, seed=5)]
    assert sorted(epoch) == list(range(10))
    assert batch_indices(10, 3, 4, seed=5) != batch_indices(10, 3, 0, seed=5)  # a new shuffle next epoch


def test_train_sft_lowers_loss_and_changes_params(base_dir, tmp_path):
    examples = demo_task.make_demonstrations(400, seed=3)
    hooks = NullHooks()
    config = SFTConfig(base_model=base_dir, max_steps=30, learning_rate=3e-3, batch_size=16, eval_every=30,
                       eval_fraction=0.1, num_threads=1)
    summary = train_sft(config, examples, output_dir=tmp_path, hooks=hooks)
    assert not summary["stopped"] and summary["steps"] == 30 and not summary["is_adapter"]
    assert hooks.steps[-1][1]["loss"] < hooks.steps[0][1]["loss"] - 1.0
    before, tokenizer = load_policy(base_dir)
    after, _ = load_policy(summary["policy_dir"])
    assert all(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    held_out = examples[:40]
    prompts, responses = [m for m, _ in held_out], [r for _, r in held_out]
    assert (mean_token_nll(after, tokenizer, prompts, responses)
            < mean_token_nll(before, tokenizer, prompts, responses) - 1.0)
    assert summary["eval_loss"] == pytest.approx(hooks.evals[-1][1]["loss"])


def test_train_sft_with_lora_saves_an_adapter_that_generation_loads(base_dir, tmp_path):
    examples = demo_task.make_demonstrations(64, seed=4)
    config = SFTConfig(base_model=base_dir, max_steps=4, learning_rate=1e-2, batch_size=16, lora_r=4,
                       eval_fraction=0.0, num_threads=1)
    summary = train_sft(config, examples, output_dir=tmp_path, hooks=NullHooks())
    assert summary["is_adapter"] and summary["base_model"] == base_dir
    policy = tmp_path / "policy"
    assert (policy / "adapter_config.json").is_file() and (policy / "tokenizer.json").is_file()
    assert not (policy / "model.safetensors").exists()
    out = generate_samples(base_dir, [examples[0][0]], k=2, max_new_tokens=4, adapter_dir=str(policy))
    assert len(out[0]) == 2 and all(s.logprob < 0 for s in out[0])


def test_train_sft_refuses_an_empty_corpus(base_dir, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_sft(SFTConfig(base_model=base_dir), [], output_dir=tmp_path, hooks=NullHooks())
    assert not (tmp_path / "policy").exists()
