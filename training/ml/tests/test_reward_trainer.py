"""The reward trainer learns a synthetic preference, resumes exactly, stops on request, saves LoRA adapters."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from training.ml.config import RewardConfig
from training.ml.data import split_by_prompt
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer, synthetic_groups
from training.ml.trainers.reward import batch_indices, effective_learning_rate, train_reward_model
from training.ml.types import NullHooks


@pytest.fixture(scope="module")
def groups():
    return synthetic_groups(120, 4, seed=0)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, groups):
    texts = [r for g in groups for r in g.responses] + [g.messages[0]["content"] for g in groups]
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer(texts, root / "tok", vocab_size=320)
    return str(build_tiny_reward_model(root / "rm", tokenizer, hidden=32, layers=1, heads=2))


def _config(base_model, **changes):
    settings = dict(base_model=base_model, batch_size=8, epochs=1.0, learning_rate=3e-3, eval_every=5,
                    checkpoint_every=4, max_length=64, num_threads=1)
    return RewardConfig(**{**settings, **changes})


class StopAt(NullHooks):
    def __init__(self, step):
        super().__init__()
        self.stop_step = step

    def should_stop(self):
        return bool(self.steps) and self.steps[-1][0] >= self.stop_step


class CrashAt(NullHooks):
    def __init__(self, step):
        super().__init__()
        self.crash_step = step

    def on_step(self, step, total, metrics):
        super().on_step(step, total, metrics)
        if step == self.crash_step:
            raise KeyboardInterrupt("worker killed")


def test_learns_the_synthetic_preference(tmp_path, base_model, groups):
    train, held_out = split_by_prompt(groups, 0.25, seed=0)
    hooks = NullHooks()
    summary = train_reward_model(_config(base_model, epochs=3.0), train, held_out, output_dir=tmp_path, hooks=hooks)
    steps = 3 * -(-summary["num_prompts"] // 8)  # 3 epochs of ceil(prompts / batch) steps
    assert summary["stopped"] is False and summary["steps"] == summary["total_steps"] == steps
    assert len(hooks.steps) == steps and [s for s, _ in hooks.evals][-1] == steps
    first = sum(m["loss"] for _, m in hooks.steps[:4]) / 4
    last = sum(m["loss"] for _, m in hooks.steps[-4:]) / 4
    assert last < first * 0.7
    assert summary["final_eval"]["accuracy"] > 0.8  # chance is 0.5
    before = load_file(f"{base_model}/model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["num_pairs"] == sum(len(g.pairs()) for g in train if g.pairs())
    assert json.loads((tmp_path / "summary" / "summary.json").read_text())["steps"] == steps

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Describe day 999."}],
                                           add_generation_prompt=True, tokenize=False)
    texts = [prompt + "the sunny dog sunny runs</s>\n", prompt + "the dog runs small</s>\n"]
    rewards = model(**tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)).logits[:, 0]
    assert rewards[0] > rewards[1]


def test_resume_after_a_crash_reaches_the_same_model(tmp_path, base_model, groups):
    train, held_out = split_by_prompt(groups, 0.25, seed=0)
    config = _config(base_model, epochs=2.0)  # 22 steps, checkpoints at 4, 8, ..., 20
    straight = train_reward_model(config, train, held_out, output_dir=tmp_path / "a", hooks=NullHooks())

    with pytest.raises(KeyboardInterrupt):
        train_reward_model(config, train, held_out, output_dir=tmp_path / "b", hooks=CrashAt(14))
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] != []
    hooks = NullHooks()
    resumed = train_reward_model(config, train, held_out, output_dir=tmp_path / "b", hooks=hooks)
    assert any("resumed from step-00000012" in m for m in hooks.messages)
    assert hooks.steps[0][0] == 13 and resumed["steps"] == straight["steps"] == straight["total_steps"] > 14
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: same batches, optimizer state and RNG
    assert resumed["final_eval"]["accuracy"] == pytest.approx(straight["final_eval"]["accuracy"], abs=1e-6)


def test_should_stop_saves_a_checkpoint_and_says_stopped(tmp_path, base_model, groups):
    train, held_out = split_by_prompt(groups, 0.25, seed=0)
    summary = train_reward_model(_config(base_model, checkpoint_every=100), train, held_out,
                                 output_dir=tmp_path, hooks=StopAt(3))
    assert summary["stopped"] is True and summary["steps"] == 3
    assert (tmp_path / "checkpoints" / "step-00000003" / "state.pt").is_file()
    assert not (tmp_path / "model").exists()


def test_lora_saves_an_adapter_that_peft_loads(tmp_path, base_model, groups):
    from peft import AutoPeftModelForSequenceClassification

    train, held_out = split_by_prompt(groups, 0.25, seed=0)
    summary = train_reward_model(_config(base_model, lora_r=4, max_steps=6), train, held_out,
                                 output_dir=tmp_path, hooks=NullHooks())
    assert summary["is_adapter"] is True and summary["base_model"] == base_model
    config = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_model and config["task_type"] == "SEQ_CLS"
    assert not (tmp_path / "model" / "model.safetensors").exists()
    model = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "model", num_labels=1)
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert any("lora_" in k for k in adapter) and any("score" in k for k in adapter)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    base = AutoModelForSequenceClassification.from_pretrained(base_model)
    batch = tokenizer(["the sunny dog", "a cat"], padding=True, return_tensors="pt")
    assert not torch.allclose(model(**batch).logits, base(**batch).logits)  # the adapter changed the scores


def test_truncated_sequences_are_counted_in_the_summary(tmp_path, base_model, groups):
    summary = train_reward_model(_config(base_model, max_length=12, max_steps=1), groups[:8], groups[8:12],
                                 output_dir=tmp_path, hooks=NullHooks())
    assert summary["truncated"]["train"] > 0 and summary["truncated"]["eval"] > 0


def test_batches_are_a_pure_function_of_step_and_seed():
    epoch0 = [i for step in range(3) for i in batch_indices(step, 10, 4, seed=5)]
    assert sorted(epoch0) == list(range(10))  # one epoch covers every group once
    assert batch_indices(4, 10, 4, seed=5) == batch_indices(4, 10, 4, seed=5)
    assert batch_indices(3, 10, 4, seed=5) != batch_indices(0, 10, 4, seed=5)  # epoch 1 reshuffles


def test_no_pairs_is_an_error(tmp_path, base_model):
    from training.ml.types import RankedGroup

    tied = [RankedGroup(1, [{"role": "user", "content": "q"}], ["a", "b"], [[[0, 1]]])]
    with pytest.raises(ValueError, match="no training pairs"):
        train_reward_model(_config(base_model), tied, [], output_dir=tmp_path, hooks=NullHooks())


def test_group_lr_scaling_divides_by_the_root_of_pairs_per_prompt():
    config = RewardConfig(base_model="m", learning_rate=1e-3)
    assert config.group_lr_scaling is True  # the default
    assert effective_learning_rate(config, {"pairs": 28 * 10, "groups": 10}) == pytest.approx(1e-3 / 28**0.5)  # K=8
    assert effective_learning_rate(config, {"pairs": 6 * 10 + 3, "groups": 11}) == pytest.approx(1e-3 / (63 / 11) ** 0.5)
    assert effective_learning_rate(config, {"pairs": 10, "groups": 10}) == 1e-3  # K=2: one pair per prompt
    raw = RewardConfig(base_model="m", learning_rate=1e-3, group_lr_scaling=False)
    assert effective_learning_rate(raw, {"pairs": 280, "groups": 10}) == 1e-3


@pytest.mark.parametrize("scaled", [True, False])
def test_the_optimizer_steps_at_the_scaled_learning_rate(tmp_path, base_model, groups, scaled):
    train, held_out = split_by_prompt(groups, 0.25, seed=0)
    hooks = NullHooks()
    config = _config(base_model, max_steps=2, lr_scheduler="constant", group_lr_scaling=scaled)
    summary = train_reward_model(config, train, held_out, output_dir=tmp_path, hooks=hooks)
    pairs_per_prompt = summary["num_pairs"] / summary["num_prompts"]
    assert pairs_per_prompt > 2  # K=4 rankings: several pairs per prompt, so scaling changes something
    expected = 3e-3 / pairs_per_prompt**0.5 if scaled else 3e-3
    assert summary["learning_rate"] == pytest.approx(expected)
    assert [m["lr"] for _, m in hooks.steps] == pytest.approx([expected, expected])
    assert any("group_lr_scaling" in m for m in hooks.messages) is scaled
