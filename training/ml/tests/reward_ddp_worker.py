"""One process of the 2-process reward-trainer test (``test_distributed.py``); run under ``accelerate launch``.

    python -m training.ml.tests.reward_ddp_worker BASE_MODEL OUT_DIR

Every process trains (a) straight through and (b) stopped after step 4 then resumed, and writes what the test
checks: its final parameters (``params-<run>-rank<R>.pt``), which files it wrote (``writes-rank<R>.txt``:
checkpoints and models), and, on the main process, the per-step metrics the hooks received. Launched with an
FSDP accelerate config (``test_fsdp.py``), the parameters written are the full ones, gathered by every process,
and ``share-rank<R>.json`` says what share of them this process held.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from training.ml.config import RewardConfig
from training.ml.data import split_by_prompt
from training.ml.tests import policy_ddp_worker
from training.ml.tiny_models import synthetic_groups
from training.ml.trainers import reward
from training.ml.types import NullHooks

RANK = int(os.environ.get("RANK", "0"))


class StopAfter(NullHooks):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop_step = step

    def should_stop(self) -> bool:
        return bool(self.steps) and self.steps[-1][0] >= self.stop_step


def instrument(out: Path) -> dict:
    """Record every checkpoint/model write of this process, and keep the model object to dump its weights."""
    seen: dict = {}
    real_checkpoint_save, real_save_model, real_load = reward.checkpoint_save, reward.save_model, reward.load_reward_model

    def note(line: str) -> None:
        with open(out / f"writes-rank{RANK}.txt", "a") as handle:
            handle.write(line + "\n")

    def checkpoint_save(**kwargs):
        note(f"checkpoint {kwargs['root'].parent.name} {kwargs['step']}")
        return real_checkpoint_save(**kwargs)

    def save_model(model, tokenizer, target, **kwargs):
        note(f"model {Path(target).parent.name}")
        return real_save_model(model, tokenizer, target, **kwargs)

    def load_reward_model(config, hooks):
        tokenizer, model = real_load(config, hooks)
        seen["model"] = model
        return tokenizer, model

    reward.checkpoint_save, reward.save_model, reward.load_reward_model = checkpoint_save, save_model, load_reward_model
    return seen


def ddp_config(base_model: str) -> RewardConfig:
    """36 training prompts, 5 per step: 3 + 2 per process, and at step 8 one prompt (the other process pads)."""
    return RewardConfig(base_model=base_model, batch_size=5, max_steps=8, learning_rate=3e-3, eval_every=3,
                        checkpoint_every=3, max_length=64, num_threads=1)


def ddp_groups():
    return split_by_prompt(synthetic_groups(48, 4, seed=0), 0.25, seed=0)


def full_state(model) -> dict[str, torch.Tensor]:
    """The model's state dict: this process's own, or, sharded (FSDP), the full one gathered on every process."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return {k: v.detach().clone() for k, v in get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True)).items()}


def main(base_model: str, out: Path) -> None:
    seen = instrument(out)
    train, held_out = ddp_groups()
    config = ddp_config(base_model)
    results = {}
    for name, hooks_list in (("straight", [NullHooks()]), ("resumed", [StopAfter(4), NullHooks()])):
        for hooks in hooks_list:
            summary = reward.train_reward_model(config, train, held_out, output_dir=out / name, hooks=hooks)
        torch.save(full_state(seen["model"]), out / f"params-{name}-rank{RANK}.pt")
        (out / f"share-rank{RANK}.json").write_text(json.dumps(policy_ddp_worker.held_share(seen["model"])))
        results[name] = {"summary": summary, "steps": [h.steps for h in hooks_list], "evals": [h.evals for h in hooks_list]}
    if RANK == 0:
        (out / "result.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
