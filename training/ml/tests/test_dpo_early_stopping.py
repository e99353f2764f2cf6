"""DPO's early stopping on held-out implicit-reward accuracy (issue 12's remedy against over-optimisation).

The toy preference of ``test_dpo`` (bright over dark words) on a random tiny policy, with a fifth of the TRAINING
prompts' rankings flipped (the held-out prompts keep the true order) and a learning rate high enough to over-fit
them: held-out accuracy climbs, then stalls or falls while the training loss goes on down.
"""
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.ml import demo_task
from training.ml.config import ConfigError, DPOConfig
from training.ml.data import split_by_prompt
from training.ml.generation import load_policy, sequence_logprobs
from training.ml.loop import LoopConfig, dpo_settings
from training.ml.tests.test_dpo import _toy_groups
from training.ml.trainers import dpo
from training.ml.trainers.dpo import train_dpo
from training.ml.types import NullHooks, RankedGroup

FRACTION, SEED = 0.25, 0


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return str(demo_task.build_demo_base(tmp_path_factory.mktemp("estop"), seed=0))


def _groups(n: int = 64, flip: float = 0.2) -> list[RankedGroup]:
    """Toy groups; ``flip`` of the training prompts (those ``split_by_prompt`` keeps for training) ranked
    dark first."""
    groups = _toy_groups(n, seed=1)
    _, held = split_by_prompt(groups, FRACTION, SEED)
    held_ids, rng, out = {g.prompt_id for g in held}, random.Random(7), []
    for g in groups:
        flipped = g.prompt_id not in held_ids and rng.random() < flip
        out.append(RankedGroup(prompt_id=g.prompt_id, messages=g.messages, responses=g.responses,
                               rankings=[[[2, 3], [0, 1]]] if flipped else g.rankings, ref_logprobs=g.ref_logprobs))
    return out


def _config(base_dir: str, **extra) -> DPOConfig:
    settings = dict(beta=0.5, learning_rate=1e-2, batch_size=8, max_steps=30, eval_every=2, checkpoint_every=2,
                    keep_checkpoints=100, lr_scheduler="constant", num_threads=1, eval_fraction=FRACTION,
                    early_stopping_patience=3, seed=SEED)
    return DPOConfig(base_model=base_dir, **{**settings, **extra})


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a save_pretrained directory (full weights or a LoRA adapter)."""
    weights = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        weights.update(load_file(file))
    assert weights, directory
    return weights


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _held_out_accuracy(base_dir: str, policy_dir: str, held_out: list[RankedGroup], lora: bool) -> float:
    """Share of held-out pairs whose implicit reward log π − log π_ref is higher for the chosen reply (ties ½),
    computed here without the trainer: π_ref is the starting policy (the groups store no log-probs)."""
    reference, tokenizer = load_policy(base_dir)
    policy, _ = load_policy(base_dir, adapter_dir=policy_dir) if lora else load_policy(policy_dir)
    scores = []
    for g in held_out:
        messages = [g.messages] * len(g.responses)
        reward = (sequence_logprobs(policy, tokenizer, messages, g.responses)
                  - sequence_logprobs(reference, tokenizer, messages, g.responses))
        scores += [1.0 if reward[w] > reward[l] else 0.5 if reward[w] == reward[l] else 0.0
                   for w, l, _, _ in g.pairs()]
    return sum(scores) / len(scores)


@pytest.mark.slow
@pytest.mark.parametrize("lora_r,learning_rate", [(0, 1e-2), (4, 3e-2)], ids=["full", "lora"])
def test_early_stopping_stops_and_saves_the_best_steps_weights(base_dir, tmp_path, lora_r, learning_rate):
    groups, hooks = _groups(), NullHooks()
    summary = train_dpo(_config(base_dir, lora_r=lora_r, learning_rate=learning_rate), groups, [],
                        output_dir=tmp_path, hooks=hooks)
    accuracies = [(step, m["reward_accuracy"]) for step, m in hooks.evals]
    best = max(a for _, a in accuracies)
    assert summary["stopped_early"] and not summary["stopped"]
    assert summary["best_eval_accuracy"] == best
    assert summary["best_step"] == min(s for s, a in accuracies if a == best)  # ties: the earlier step
    assert summary["steps"] == summary["best_step"] + 3 * 2 < 30  # 3 evaluations without a better one
    assert [s for s, _ in accuracies] == list(range(2, summary["steps"] + 1, 2))
    assert summary["final_eval"] == hooks.evals[-1][1]  # the last evaluation's figures, as before
    assert any(f"the policy saved is step {summary['best_step']}'s" in m for m in hooks.messages)
    saved = _weights(tmp_path / "policy")
    checkpoints = tmp_path / "checkpoints"
    assert _same(saved, _weights(checkpoints / f"step-{summary['best_step']:08d}" / "model"))
    assert not _same(saved, _weights(checkpoints / f"step-{summary['steps'] - 2:08d}" / "model"))
    _, held_out = split_by_prompt(groups, FRACTION, SEED)
    saved_accuracy = _held_out_accuracy(base_dir, summary["policy_dir"], held_out, lora=bool(lora_r))
    assert saved_accuracy == pytest.approx(summary["best_eval_accuracy"], abs=0.02)
    assert saved_accuracy >= hooks.evals[-1][1]["reward_accuracy"]  # no worse than the last step's policy


class Recorder(NullHooks):
    """Stops after ``stop_after`` steps (0: never)."""

    def __init__(self, stop_after: int = 0) -> None:
        super().__init__()
        self.stop_after = stop_after

    def should_stop(self) -> bool:
        return bool(self.stop_after) and len(self.steps) >= self.stop_after


@pytest.mark.slow
def test_resume_after_a_stop_signal_keeps_the_best_weights_and_the_count(base_dir, tmp_path):
    groups = _groups()
    config = _config(base_dir, checkpoint_every=1000)  # the only checkpoint is the stop signal's
    straight = train_dpo(config, groups, [], output_dir=tmp_path / "straight", hooks=NullHooks())
    stop_at = straight["best_step"] + 2  # one evaluation after the best: weights ≠ best, count 1
    assert straight["stopped_early"] and stop_at < straight["steps"]
    first = Recorder(stop_after=stop_at)
    stopped = train_dpo(config, groups, [], output_dir=tmp_path / "resumed", hooks=first)
    assert stopped == {"stopped": True, "steps": stop_at, "total_steps": 30}
    hooks = NullHooks()
    resumed = train_dpo(config, groups, [], output_dir=tmp_path / "resumed", hooks=hooks)
    assert hooks.steps[0][0] == stop_at + 1
    for key in ("best_step", "best_eval_accuracy", "steps", "stopped_early"):
        assert resumed[key] == straight[key], key
    a, b = _weights(tmp_path / "straight" / "policy"), _weights(tmp_path / "resumed" / "policy")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(f"best held-out accuracy {straight['best_eval_accuracy']:.4f} at step {straight['best_step']}, 1 of 3"
               in m for m in hooks.messages)


@pytest.mark.slow
def test_patience_zero_changes_nothing(base_dir, tmp_path):
    """Without early stopping the run is the run without the option: same steps, same last weights; an
    eval_fraction is the same as handing the trainer those held-out prompts."""
    groups = _groups()
    train, held_out = split_by_prompt(groups, FRACTION, SEED)
    plain = dict(beta=0.5, learning_rate=1e-2, batch_size=8, max_steps=12, eval_every=2, checkpoint_every=4,
                 lr_scheduler="constant", num_threads=1, seed=SEED)
    runs = {}
    for name, extra, data, evaluate_on in (
            ("absent", {}, train, []),
            ("absent_with_eval", {}, train, held_out),
            ("patience_0", {"eval_fraction": FRACTION, "early_stopping_patience": 0}, groups, [])):
        hooks = NullHooks()
        summary = train_dpo(DPOConfig(base_model=base_dir, **plain, **extra), data, evaluate_on,
                            output_dir=tmp_path / name, hooks=hooks)
        runs[name] = (summary, hooks, _weights(tmp_path / name / "policy"))
        assert summary["steps"] == 12 and "best_step" not in summary and "stopped_early" not in summary
        state = torch.load(tmp_path / name / "checkpoints" / "step-00000008" / "state.pt", weights_only=True)
        assert state["extra"] == {}
    assert _same(runs["absent"][2], runs["absent_with_eval"][2]) and _same(runs["absent"][2], runs["patience_0"][2])
    assert [m for _, m in runs["absent"][1].steps] == [m for _, m in runs["patience_0"][1].steps]
    assert runs["absent_with_eval"][1].evals == runs["patience_0"][1].evals and len(runs["patience_0"][1].evals) == 6


@pytest.mark.slow
def test_held_out_prompts_never_reach_a_training_batch(base_dir, tmp_path, monkeypatch):
    """Split by PROMPT: a prompt with two ranked groups lands on one side only; training batches hold none of
    the held-out prompts, and evaluation scores exactly them."""
    groups = _groups(40)
    twins = [RankedGroup(prompt_id=g.prompt_id, messages=g.messages, responses=list(reversed(g.responses)),
                         rankings=g.rankings) for g in groups[::3]]  # a second ranking session of the same prompts
    trained, evaluated = [], []
    real_step, real_evaluate = dpo._train_step, dpo.evaluate

    def train_step(model, batch, *args, **kwargs):
        trained.append([g.prompt_id for g in batch])
        return real_step(model, batch, *args, **kwargs)

    def evaluate(model, held, *args, **kwargs):
        evaluated.append({g.prompt_id for g in held})
        return real_evaluate(model, held, *args, **kwargs)

    monkeypatch.setattr(dpo, "_train_step", train_step)
    monkeypatch.setattr(dpo, "evaluate", evaluate)
    hooks = NullHooks()
    summary = train_dpo(_config(base_dir, max_steps=10, early_stopping_patience=1000), groups + twins, [],
                        output_dir=tmp_path, hooks=hooks)
    _, expected = split_by_prompt(groups + twins, FRACTION, SEED)
    held_ids = {g.prompt_id for g in expected}
    seen = {p for batch in trained for p in batch}
    assert len(trained) == 10 and evaluated and all(e == held_ids for e in evaluated)
    assert held_ids and not seen & held_ids
    assert seen | held_ids == {g.prompt_id for g in groups}  # every other prompt trains
    assert summary["eval_prompts"] == len(expected) > len(held_ids)  # both groups of a held-out twin are held out
    assert not summary["stopped_early"]  # patience never ran out: the best of the 5 evaluations is still saved
    assert any("early stopping did not stop the run (10 steps)" in m for m in hooks.messages)


@pytest.mark.parametrize("data,field,message", [
    ({"early_stopping_patience": -1, "eval_fraction": 0.1}, "early_stopping_patience", "must be >= 0, got -1"),
    ({"early_stopping_patience": "3", "eval_fraction": 0.1}, "early_stopping_patience", "must be int, got str"),
    ({"early_stopping_patience": 2.5, "eval_fraction": 0.1}, "early_stopping_patience", "must be int, got float"),
    ({"eval_fraction": 1.0}, "eval_fraction", "must be <= 0.9, got 1.0"),
    ({"eval_fraction": "0.1"}, "eval_fraction", "must be float, got str"),
    ({"eval_fraction": -0.1}, "eval_fraction", "must be >= 0.0"),
    ({"early_stopping_min_delta": -0.01}, "early_stopping_min_delta", "must be >= 0.0"),
    ({"early_stopping_patience": 3}, "early_stopping_patience", "needs held-out prompts: set eval_fraction > 0"),
])
def test_bad_early_stopping_settings_are_refused_naming_the_field(data, field, message):
    with pytest.raises(ConfigError, match=message) as error:
        DPOConfig.from_dict({"base_model": "m", **data})
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")


def test_good_early_stopping_settings_and_the_defaults():
    config = DPOConfig.from_dict({"base_model": "m", "eval_fraction": 0.2, "early_stopping_patience": 3,
                                  "early_stopping_min_delta": 0.01})
    assert (config.eval_fraction, config.early_stopping_patience, config.early_stopping_min_delta) == (0.2, 3, 0.01)
    default = DPOConfig(base_model="m")
    assert (default.eval_fraction, default.early_stopping_patience, default.early_stopping_min_delta) == (0.0, 0, 0.0)
    assert DPOConfig.__dataclass_fields__["early_stopping_patience"].metadata["help"]  # shown with the settings


def test_a_split_that_holds_out_no_pair_is_refused_before_training(base_dir, tmp_path):
    one_prompt = _toy_groups(1, seed=5)  # one prompt: split_by_prompt keeps it for training
    with pytest.raises(ConfigError, match="holds out no prompt with a pair") as error:
        train_dpo(_config(base_dir), one_prompt, [], output_dir=tmp_path, hooks=NullHooks())
    assert error.value.field == "eval_fraction" and not (tmp_path / "policy").exists()


def test_the_loop_passes_early_stopping_to_its_dpo_runs():
    assert dpo_settings(LoopConfig())["early_stopping_patience"] == 0
    assert "eval_every" not in dpo_settings(LoopConfig())  # nothing held out: the callers' value stands
    settings = dpo_settings(LoopConfig(dpo_early_stopping_patience=2, dpo_eval_fraction=0.2, dpo_eval_every=3))
    assert (settings["early_stopping_patience"], settings["eval_fraction"], settings["eval_every"]) == (2, 0.2, 3)
    DPOConfig.from_dict({"base_model": "m", **settings})
    with pytest.raises(ValueError, match="dpo_eval_fraction"):
        LoopConfig(dpo_early_stopping_patience=2)


@pytest.mark.slow
def test_a_loop_round_with_early_stopping_saves_its_best_policy(base_dir, tmp_path):
    from training.ml.loop import round_train_dpo

    config = LoopConfig(dpo_early_stopping_patience=2, dpo_eval_fraction=FRACTION, dpo_eval_every=2,
                        dpo_learning_rate=1e-2, dpo_epochs=4.0, num_threads=1, seed=SEED)
    hooks = NullHooks()
    summary = round_train_dpo(base_dir, _groups(), output_dir=tmp_path, config=config, hooks=hooks)
    assert summary["eval_prompts"] == 16 and summary["best_step"] % 2 == 0 and "stopped_early" in summary
    assert [s for s, _ in hooks.evals][:2] == [2, 4]  # the loop's eval_every reached the run
    assert any(f"the policy saved is step {summary['best_step']}'s" in m for m in hooks.messages)
