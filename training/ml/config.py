"""Training configs: one dataclass per algorithm on a shared, validated base.

A config travels as JSON (TrainingRun.config). ``Config.from_dict`` is the only way in from untrusted
input: it rejects unknown keys, wrong types and out-of-range values with a ``ConfigError`` that names the
field, so a bad config is refused before anything is queued. Ranges live next to each field as
``metadata`` (``min``, ``max``, ``choices``), declared with ``setting(...)``; cross-field rules go in
``_check``. To add an algorithm: subclass ``TrainConfig`` and register it in ``CONFIG_CLASSES``.

>>> RewardConfig.from_dict({"base_model": "models/tiny", "learning_rate": 3e-4}).learning_rate
0.0003
>>> try:
...     RewardConfig.from_dict({"base_model": "m", "batch_size": 0})
... except ConfigError as error:
...     print(error.field, "|", error)
batch_size | batch_size: must be >= 1, got 0
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A config value is wrong; ``field`` names it (dotted for nested keys) and the message says why."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@contextmanager
def loading(field_name: str, value: Any = None):
    """Errors while loading what a setting names (a missing or unreadable model, LoRA target modules the model
    lacks) are errors of that setting: ConfigError, which the run runner treats as permanent (the run fails at
    once; a retry cannot heal it). Out-of-memory and other runtime errors pass through unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError) as error:
        shown = f" ({value!r})" if value is not None else ""
        raise ConfigError(field_name, f"cannot be loaded{shown}: {error}") from error


def setting(default: Any, *, min: float | None = None, max: float | None = None, choices=None, help: str = ""):
    """A dataclass field with its validation range and a one-line help text."""
    meta = {"min": min, "max": max, "choices": tuple(choices) if choices else None, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(name, f"must be a list, got {type(value).__name__}")
        return [_coerce(f"{name}[{i}]", v, item_type) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(name, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


@dataclass
class TrainConfig:
    """Settings every trainer shares. Subclasses add their own fields (all with defaults)."""

    kind: ClassVar[str] = ""

    base_model: str = setting("", help="local Hugging Face model directory (or hub id where a hub is reachable)")
    seed: int = setting(0, min=0, help="seeds init, shuffling and dropout")
    epochs: float = setting(1.0, min=0.01, max=1000, help="passes over the training data")
    max_steps: int = setting(0, min=0, help="stop after this many optimizer steps (0: use epochs)")
    batch_size: int = setting(8, min=1, max=4096, help="prompts per optimizer step")
    learning_rate: float = setting(1e-4, min=0.0, max=1.0)
    weight_decay: float = setting(0.0, min=0.0, max=1.0)
    warmup_ratio: float = setting(0.0, min=0.0, max=1.0, help="fraction of steps with a linear warm-up")
    lr_scheduler: str = setting("linear", choices=("linear", "cosine", "constant"))
    grad_clip: float = setting(1.0, min=0.0, help="max gradient norm (0: no clipping)")
    max_length: int = setting(256, min=8, max=131072, help="tokens per sequence; longer ones keep their end")
    eval_every: int = setting(50, min=1, help="steps between held-out evaluations")
    checkpoint_every: int = setting(100, min=1, help="steps between checkpoints")
    keep_checkpoints: int = setting(2, min=1, max=100)
    lora_r: int = setting(0, min=0, max=1024, help="LoRA rank (0: train the full model)")
    lora_alpha: float = setting(16.0, min=0.0)
    lora_dropout: float = setting(0.05, min=0.0, max=1.0)
    lora_target_modules: list[str] = setting([], help="module names for LoRA (empty: all linear layers)")
    num_threads: int = setting(0, min=0, max=1024, help="CPU threads for torch (0: all cores)")
    mixed_precision: str = setting("no", choices=("no", "bf16", "auto"),
                                   help="bf16 autocast of forward passes (auto: bf16 on a GPU that has it); ml.precision")
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward: less memory, more compute")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build and validate a config from JSON-like data; raise ConfigError naming the bad field."""
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting for {cls.__name__} (known: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(name, value, hints[name]) for name, value in data.items()}
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every field's type and range, then the cross-field rules in ``_check``."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            low, high, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
            if value is None or isinstance(value, list):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, got {value!r}")
            if choices is not None and value not in choices:
                raise ConfigError(f.name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
            if low is not None and value < low:
                raise ConfigError(f.name, f"must be >= {low}, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(f.name, f"must be <= {high}, got {value!r}")
        self._check()

    def _check(self) -> None:
        if not self.base_model.strip():
            raise ConfigError("base_model", "is required: a local model directory or hub id")


@dataclass
class RewardConfig(TrainConfig):
    """Bradley-Terry reward model on ranked groups (InstructGPT recipe: K forwards per prompt)."""

    kind: ClassVar[str] = "reward"

    learning_rate: float = setting(5e-5, min=0.0, max=1.0)
    margin_coef: float = setting(
        0.0, min=0.0, max=100.0, help="subtract coef × tier distance inside the sigmoid (Llama 2 margin loss)"
    )
    center_coef: float = setting(0.0, min=0.0, max=100.0, help="coef × mean r² keeps rewards centred at 0")
    use_ranking_weights: bool = setting(True, help="weigh each pair by its ranking's weight")
    eval_fraction: float = setting(0.1, min=0.0, max=0.9, help="share of prompts held out (split by prompt)")
    disable_dropout: bool = setting(True, help="turn dropout off (as TRL does): rewards of one batch stay comparable")
    mixed_precision: str = setting("auto", choices=("no", "bf16", "auto"),
                                   help="bf16 autocast of forward passes (auto: bf16 on a GPU that has it); ml.precision")
    share_prefix: bool = setting(
        True, help="encode a prompt once for its K responses (decoders; checked against the unshared rewards first)"
    )
    group_lr_scaling: bool = setting(
        True, help="divide learning_rate by √(mean pairs per prompt): a step's C(K,2) pairs per prompt share K "
                   "rewards, so they are far noisier than as many independent pairs (docs/reward_model.md)"
    )


@dataclass
class PolicyTrainConfig(TrainConfig):
    """Settings every policy trainer (SFT, DPO, PPO, GRPO) shares: the in-run health check
    (``training.ml.health_watch``), which runs only when the caller gives it held-out prompts."""

    health_every: int = setting(50, min=0, help="steps between in-run health checks; the last healthy policy is "
                                                "kept (0: off)")
    health_prompts: int = setting(8, min=1, max=1024, help="held-out prompts of each in-run health check")


@dataclass
class SFTConfig(PolicyTrainConfig):
    """Supervised fine-tuning of a causal LM on (prompt, response) demonstrations; loss on response tokens."""

    kind: ClassVar[str] = "sft"

    learning_rate: float = setting(1e-3, min=0.0, max=1.0)
    batch_size: int = setting(32, min=1, max=4096, help="examples per optimizer step")
    eval_fraction: float = setting(0.05, min=0.0, max=0.9, help="share of examples held out for eval loss")


@dataclass
class DPOConfig(PolicyTrainConfig):
    """DPO on ranked groups: K policy forwards per prompt give all C(K,2) pairs of its rankings."""

    kind: ClassVar[str] = "dpo"

    learning_rate: float = setting(5e-4, min=0.0, max=1.0)
    batch_size: int = setting(8, min=1, max=4096, help="prompts (ranked groups) per optimizer step")
    beta: float = setting(0.1, min=1e-4, max=100.0, help="β of DPO: higher keeps the policy nearer the reference")
    label_smoothing: float = setting(0.0, min=0.0, max=0.49, help="conservative DPO: assumed label-flip rate")
    loss_type: str = setting("sigmoid", choices=("sigmoid", "ipo"),
                             help="sigmoid: DPO (Rafailov et al. 2023); ipo: IPO's squared loss (Azar et al. 2023)")
    rpo_alpha: float = setting(0.0, min=0.0, max=100.0,
                               help="RPO: add α × NLL per token of the chosen reply (Pang et al. 2024); 0: off")
    reference_model: str = setting(
        "", help="model directory whose log-probs are the reference (e.g. round 0's policy); empty: the stored "
                 "generation log-probs, else the starting policy's")
    margin_weighting: bool = setting(False, help="weigh each pair by its tier distance")
    use_ranking_weights: bool = setting(True, help="weigh each pair by its ranking's weight")
    adapter: str = setting("", help="LoRA adapter directory to start from (the previous policy's), or empty")
    share_prefix: bool = setting(
        True, help="encode a prompt once for its K responses (checked against the unshared log-probs first)"
    )
    eval_fraction: float = setting(
        0.0, min=0.0, max=0.9, help="share of prompts held out (split by prompt) for the held-out DPO loss and "
                                    "implicit-reward accuracy every eval_every steps (0: every prompt trains)")
    early_stopping_patience: int = setting(
        0, min=0, max=10_000, help="stop after this many held-out evaluations in a row fail to beat the best "
                                   "accuracy; the policy saved is the best one (0: off; needs eval_fraction > 0)")
    early_stopping_min_delta: float = setting(
        0.0, min=0.0, max=1.0, help="a held-out accuracy must beat the best by more than this to count as better")

    def _check(self) -> None:
        super()._check()
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError("label_smoothing", "is conservative DPO's (loss_type sigmoid); IPO has none")
        if self.early_stopping_patience and not self.eval_fraction:
            raise ConfigError("early_stopping_patience", "needs held-out prompts: set eval_fraction > 0 "
                                                         "(e.g. 0.1)")


@dataclass
class GenerationConfig(TrainConfig):
    """Sampling K responses per prompt from a policy (base_model = the policy directory)."""

    kind: ClassVar[str] = "generate"

    adapter: str = setting("", help="LoRA adapter directory on top of base_model, or empty")
    k: int = setting(4, min=1, max=64, help="samples per prompt")
    temperature: float = setting(1.0, min=0.01, max=10.0)
    top_p: float = setting(1.0, min=0.01, max=1.0)
    max_new_tokens: int = setting(64, min=1, max=8192)
    batch_size: int = setting(32, min=1, max=4096, help="prompts per generate call")


@dataclass
class _PolicyRLConfig(PolicyTrainConfig):
    """What PPO and GRPO share: rollouts from the policy, a frozen reference, a reward. One step = one batch
    of ``batch_size`` prompts sampled, scored and optimised on; ``max_steps`` (or ``epochs`` over the prompts)
    bounds the number of steps."""

    learning_rate: float = setting(1e-5, min=0.0, max=1.0)
    samples_per_prompt: int = setting(1, min=1, max=256, help="responses sampled per prompt each step (GRPO's G)")
    max_new_tokens: int = setting(32, min=1, max=8192)
    temperature: float = setting(1.0, min=0.05, max=10.0, help="sampling temperature (the loss uses the same)")
    top_p: float = setting(1.0, min=0.01, max=1.0)
    clip_eps: float = setting(0.2, min=0.0, max=10.0, help="ε of the clipped ratio")
    mini_batch_size: int = setting(0, min=0, max=65536, help="sequences per optimizer step (0: the whole batch)")
    missing_eos_penalty: float = setting(0.0, min=0.0, max=1000.0, help="subtracted from the score of a response cut at max_new_tokens")
    reward_model: str = setting("", help="reward model directory (sequence classification); may use another tokenizer")
    reward_fn: str = setting("", help="name of a registered reward_fn hook, (prompt_messages, response_text) -> float "
                                      "(the app checks and resolves it: annotation.hooks)")



@dataclass
class PPOConfig(_PolicyRLConfig):
    """PPO with a per-token KL penalty to the reference and a value head (InstructGPT), optionally PPO-ptx."""

    kind: ClassVar[str] = "ppo"

    ppo_epochs: int = setting(4, min=1, max=100, help="passes over each rollout batch")
    kl_coef: float = setting(0.05, min=0.0, max=100.0, help="β of the per-token KL penalty (initial value if adaptive)")
    kl_estimator: str = setting("k1", choices=("k1", "k2", "k3"), help="per-token KL estimate in the reward")
    adaptive_kl: bool = setting(False, help="adapt β towards kl_target (Ziegler et al. 2019)")
    kl_target: float = setting(6.0, min=1e-6, help="target KL per sequence (nats) for the adaptive β")
    kl_horizon: int = setting(10000, min=1, help="samples over which β may change by 20%")
    gamma: float = setting(1.0, min=0.0, max=1.0, help="discount")
    lam: float = setting(0.95, min=0.0, max=1.0, help="GAE λ")
    value_clip: float = setting(0.2, min=0.0, max=1000.0, help="clip range of the value update")
    vf_coef: float = setting(0.1, min=0.0, max=100.0, help="weight of the value loss")
    whiten_advantages: bool = setting(True)
    value_model: str = setting("head", choices=("head", "reward_model"),
                               help="a linear value head on the policy, or a separate critic initialised from the reward model")
    ptx_coef: float = setting(0.0, min=0.0, max=1000.0, help="γ of PPO-ptx: weight of the LM loss on ptx texts")
    ptx_batch_size: int = setting(8, min=1, max=4096, help="ptx texts per optimizer step")


@dataclass
class GRPOConfig(_PolicyRLConfig):
    """GRPO (Shao et al. 2024): G samples per prompt, group-normalised advantages, no critic."""

    kind: ClassVar[str] = "grpo"

    samples_per_prompt: int = setting(8, min=2, max=256, help="G: responses per prompt (a group)")
    beta: float = setting(0.04, min=0.0, max=100.0, help="β of the k3 KL to the reference in the loss")
    num_iterations: int = setting(1, min=1, max=100, help="μ: optimisation passes over each batch of samples")
    scale_rewards: bool = setting(True, help="divide by the group's std (False: Dr. GRPO, mean only)")
    loss_aggregation: str = setting("sequence", choices=("sequence", "token"),
                                    help="mean per sequence then over sequences (eq. 3), or over all tokens (DAPO)")


CONFIG_CLASSES: dict[str, type[TrainConfig]] = {
    "reward": RewardConfig, "sft": SFTConfig, "dpo": DPOConfig, "generate": GenerationConfig,
    "ppo": PPOConfig, "grpo": GRPOConfig,
}


def config_from_dict(kind: str, data: dict[str, Any]) -> TrainConfig:
    """The validated config of a run kind; ConfigError for an unknown kind or a bad value."""
    if kind not in CONFIG_CLASSES:
        raise ConfigError("kind", f"no config for run kind {kind!r} (known: {', '.join(sorted(CONFIG_CLASSES))})")
    return CONFIG_CLASSES[kind].from_dict(data)


OPTIMIZERS = ("dpo", "ppo", "grpo")  # the run kinds that make the loop's policy r+1 from policy r
