"""DPO: the loss on hand-computed tensors, and the trainer on a toy preference (bright over dark words)."""
import math
import random

import pytest
import torch

from training.ml import demo_task
from training.ml.config import ConfigError, DPOConfig
from training.ml.generation import load_policy, sequence_logprobs
from training.ml.losses import dpo_loss
from training.ml.trainers.dpo import train_dpo
from training.ml.types import NullHooks, RankedGroup


def test_dpo_loss_matches_the_hand_computed_value():
    # Δ_w = -1 - (-1.5) = 0.5, Δ_l = -2 - (-1.5) = -0.5: β·(Δ_w − Δ_l) = 0.1 → loss = log(1 + e^-0.1)
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                      torch.tensor([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1)), rel=1e-6)
    assert chosen.item() == pytest.approx(0.05) and rejected.item() == pytest.approx(-0.05)


def test_dpo_loss_weights_and_label_smoothing():
    pc, pr = torch.tensor([0.0, 0.0]), torch.tensor([-2.0, 2.0])
    ref = torch.zeros(2)
    per_pair = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))]  # β = 0.5: logits +1 and −1
    weighted, _, _ = dpo_loss(pc, pr, ref, ref, beta=0.5, weights=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * per_pair[0] + per_pair[1]) / 4, rel=1e-6)
    smoothed, _, _ = dpo_loss(pc[:1], pr[:1], ref[:1], ref[:1], beta=0.5, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(0.8 * per_pair[0] + 0.2 * per_pair[1], rel=1e-6)


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-1.0]), torch.tensor([-1.0]), beta=1.0)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.5) and pr.grad.item() == pytest.approx(0.5)  # −β·σ(0) each way


def test_ipo_loss_matches_the_hand_computed_value_on_per_token_log_ratios():
    # Δ_w = 0.5 over 2 tokens, Δ_l = −0.5 over 4: h = 0.25 + 0.125 = 0.375; β = 0.5 → target 1: (0.375 − 1)² = 0.390625
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                      torch.tensor([-1.5]), beta=0.5, loss_type="ipo",
                                      chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([4.0]))
    assert loss.item() == pytest.approx(0.390625, rel=1e-6)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)  # β·Δ, as for DPO


def test_ipo_pulls_the_margin_to_its_target_from_either_side():
    ones = torch.tensor([1.0])
    for h, sign in ((0.0, -1.0), (3.0, 1.0)):  # below the target 1/(2β) = 1 the chosen is pushed up, above it down
        pc = torch.tensor([h], requires_grad=True)
        loss, _, _ = dpo_loss(pc, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.5, loss_type="ipo",
                              chosen_lengths=ones, rejected_lengths=ones)
        loss.backward()
        assert pc.grad.item() == pytest.approx(sign * 2 * abs(h - 1.0))  # d/dh (h − 1)² = 2(h − 1)


def test_rpo_adds_alpha_times_the_chosen_replys_per_token_nll():
    # the DPO value of the first test, plus α · (−log π(y_w)) / |y_w| = 0.5 · 1 / 2
    args = (torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    lengths = dict(chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([3.0]))
    loss, _, _ = dpo_loss(*args, beta=0.1, rpo_alpha=0.5, **lengths)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1)) + 0.25, rel=1e-6)
    with pytest.raises(ValueError, match="token counts"):
        dpo_loss(*args, beta=0.1, rpo_alpha=0.5)
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(*args, beta=0.1, loss_type="ipo", label_smoothing=0.1, **lengths)


def test_dpo_config_refuses_label_smoothing_with_ipo():
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig.from_dict({"base_model": "m", "loss_type": "ipo", "label_smoothing": 0.1})
    assert DPOConfig.from_dict({"base_model": "m", "loss_type": "ipo", "rpo_alpha": 1.0}).rpo_alpha == 1.0


def _toy_groups(n: int, seed: int, with_ref: bool = False) -> list[RankedGroup]:
    """Two bright and two dark responses per prompt, ranked bright first (ties within each mood)."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        noun = rng.choice(demo_task.NOUNS)
        words = [rng.choice(demo_task.BRIGHT), rng.choice(demo_task.BRIGHT), rng.choice(demo_task.DARK),
                 rng.choice(demo_task.DARK)]
        responses = [f"the {w} {noun} {rng.choice(demo_task.VERBS)}." for w in words]
        groups.append(RankedGroup(prompt_id=seed * 1000 + i, messages=demo_task.demo_prompt(noun),
                                  responses=responses, rankings=[[[0, 1], [2, 3]]],
                                  ref_logprobs=[None] * 4 if not with_ref else []))
    return groups


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return str(demo_task.build_demo_base(tmp_path_factory.mktemp("dpo"), seed=0))


def _config(base_dir: str, **extra) -> DPOConfig:
    settings = dict(beta=0.5, learning_rate=3e-3, batch_size=8, max_steps=24, eval_every=24, checkpoint_every=8,
                    lr_scheduler="constant", num_threads=1)
    return DPOConfig(base_model=base_dir, **{**settings, **extra})


@pytest.mark.slow
def test_train_dpo_raises_implicit_reward_accuracy_and_changes_params(base_dir, tmp_path):
    hooks = NullHooks()
    train, held_out = _toy_groups(48, seed=1), _toy_groups(16, seed=2)
    summary = train_dpo(_config(base_dir), train, held_out, output_dir=tmp_path, hooks=hooks)
    assert summary["num_pairs"] == 48 * 4 and not summary["stopped"]
    assert summary["prefix_sharing"] is True  # the default: one packed row per prompt
    assert any("no stored reference log-prob" in m for m in hooks.messages)
    first, last = hooks.steps[0][1], hooks.steps[-1][1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    assert last["loss"] < first["loss"] - 0.2
    assert hooks.evals[-1][1]["reward_accuracy"] > 0.8  # held-out prompts: generalises bright > dark
    assert {"chosen_reward", "rejected_reward", "margin"} <= set(last)
    before, _ = load_policy(base_dir)
    after, tokenizer = load_policy(summary["policy_dir"])
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert len(changed) == len(list(before.parameters()))
    g = held_out[0]
    delta = (sequence_logprobs(after, tokenizer, [g.messages] * 4, g.responses)
             - sequence_logprobs(before, tokenizer, [g.messages] * 4, g.responses))
    assert delta[:2].mean() > delta[2:].mean()  # bright responses gained likelihood relative to dark


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"loss_type": "ipo"}, {"rpo_alpha": 1.0}, {"label_smoothing": 0.1}],
                         ids=["ipo", "rpo", "cdpo"])
def test_train_dpo_lowers_each_loss_variant_on_a_toy_batch(base_dir, tmp_path, extra):
    hooks = NullHooks()
    summary = train_dpo(_config(base_dir, **extra), _toy_groups(48, seed=1), _toy_groups(16, seed=2),
                        output_dir=tmp_path, hooks=hooks)
    first, last = hooks.steps[0][1], hooks.steps[-1][1]
    assert abs(first["chosen_reward"]) < 1e-5 and abs(first["rejected_reward"]) < 1e-5  # policy == reference
    assert last["loss"] < first["loss"] - 0.1
    assert hooks.evals[-1][1]["reward_accuracy"] > 0.8  # and the held-out prompts still order bright > dark
    assert not summary["stopped"]


@pytest.mark.slow
def test_a_reference_model_replaces_the_stored_log_probs(base_dir, tmp_path):
    """reference_model (the loop's round-0 anchor) scores every reference once: stored values, even wrong ones,
    are ignored, so with the starting policy as the reference step 1 sits exactly at log 2."""
    wrong = [RankedGroup(prompt_id=g.prompt_id, messages=g.messages, responses=g.responses, rankings=g.rankings,
                         ref_logprobs=[0.0, 0.0, -50.0, -50.0]) for g in _toy_groups(16, seed=4)]
    hooks = NullHooks()
    train_dpo(_config(base_dir, max_steps=1, reference_model=base_dir), wrong, [], output_dir=tmp_path / "a",
              hooks=hooks)
    assert hooks.steps[0][1]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(hooks.steps[0][1]["margin"]) < 1e-5
    assert any("stored values not used" in m for m in hooks.messages)
    stored = NullHooks()
    train_dpo(_config(base_dir, max_steps=1), wrong, [], output_dir=tmp_path / "b", hooks=stored)
    assert abs(stored.steps[0][1]["margin"]) > 1.0  # without it the stored (wrong) values are the reference


class StopAfter(NullHooks):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.limit = steps

    def should_stop(self) -> bool:
        return len(self.steps) >= self.limit


@pytest.mark.slow
def test_train_dpo_stops_and_resumes_to_the_same_policy(base_dir, tmp_path):
    train = _toy_groups(24, seed=3)
    config = DPOConfig(
        base_model=base_dir, beta=0.5, learning_rate=3e-3, batch_size=8, max_steps=12, checkpoint_every=4, num_threads=1,
        lr_scheduler="linear")
    straight = train_dpo(config, train, [], output_dir=tmp_path / "straight", hooks=NullHooks())
    stopper = StopAfter(6)
    stopped = train_dpo(config, train, [], output_dir=tmp_path / "resumed", hooks=stopper)
    assert stopped["stopped"] and stopped["steps"] == 6
    hooks = NullHooks()
    resumed = train_dpo(config, train, [], output_dir=tmp_path / "resumed", hooks=hooks)
    assert any("resumed from step-00000006" in m for m in hooks.messages)
    assert [s for s, _ in hooks.steps] == list(range(7, 13))
    a, _ = load_policy(straight["policy_dir"])
    b, _ = load_policy(resumed["policy_dir"])
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_train_dpo_rejects_groups_without_pairs(base_dir, tmp_path):
    tied = [RankedGroup(prompt_id=1, messages=demo_task.demo_prompt("hill"), responses=["a.", "b."],
                        rankings=[[[0, 1]]], ref_logprobs=[-1.0, -1.0])]
    with pytest.raises(ValueError, match="no training pairs"):
        train_dpo(_config(base_dir), tied, [], output_dir=tmp_path, hooks=NullHooks())
    assert not (tmp_path / "policy").exists()
