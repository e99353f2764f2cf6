"""Large-model settings every trainer shares: bf16 autocast and gradient checkpointing. No Django here.

``mixed_precision``: "no" (fp32), "bf16" (forward passes under ``torch.autocast`` to bfloat16; weights,
optimizer state and losses stay fp32), or "auto" (bf16 on a CUDA device that supports it, fp32 elsewhere:
what the reward trainer has always done). bf16 on CPU is allowed: torch autocasts to bfloat16 on any CPU
(fast with AVX-512 BF16 or AMX, emulated and slow without). bf16 on a CUDA device without bfloat16 (before
Ampere) is refused with a ConfigError naming the setting, before any step.

>>> resolve_mixed_precision("auto", torch.device("cpu")), resolve_mixed_precision("bf16", torch.device("cpu"))
('no', 'bf16')
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from training.ml.config import ConfigError


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """"no" or "bf16" for this device; ConfigError when bf16 is asked of a GPU that lacks it."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError("mixed_precision", f"bf16 needs a GPU with bfloat16 support (Ampere or newer); "
                                             f"this worker's {name} has none: set \"no\"")
    if setting not in ("no", "bf16"):
        raise ConfigError("mixed_precision", f"must be one of 'no', 'bf16', 'auto', got {setting!r}")
    return setting


def autocast(mode: str, device: torch.device):
    """The context for forward passes: bf16 autocast on ``device`` when ``mode`` is "bf16", else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else nullcontext()


def enable_gradient_checkpointing(model, enabled: bool) -> None:
    """Recompute activations in backward instead of storing them (less memory, ~30% more compute)."""
    if not enabled:
        return
    if not getattr(model, "supports_gradient_checkpointing", True) or not hasattr(model, "gradient_checkpointing_enable"):
        raise ConfigError("gradient_checkpointing", f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}  # works with frozen inputs (LoRA) and DDP
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):  # LoRA: frozen embeddings must still pass gradients on
        model.enable_input_require_grads()
