"""Sharded parameters (FSDP2: torch's ``fully_shard``) for the SFT, DPO and reward trainers, chosen by the
operator's accelerate config file. No Django here.

``accelerate launch --config_file F`` with ``distributed_type: FSDP`` in F puts ``ACCELERATE_USE_FSDP=true`` and
the file's ``fsdp_config`` (as ``FSDP_*``) in every process's environment. accelerate 1.15 acts on them only on
GPU-like devices: on CPU (``ACCELERATE_USE_CPU``) its Accelerator reports MULTI_CPU and ``prepare`` would give
plain DDP. So the trainers shard the model themselves, with torch's ``fully_shard`` over all processes, on every
device: the same code runs on CPU over gloo (tested here) and on GPUs over NCCL (not run here). The file's
settings are read with accelerate's own parser (``FullyShardedDataParallelPlugin``); those the trainers do not
honour are refused with a ConfigError naming RLHF_ACCELERATE_CONFIG_FILE, before any work.

What sharding changes in a trainer: the model is sharded right after loading (each process keeps 1/W of every
parameter, gradient and AdamW moment; ``fully_shard`` moves the shards to the process's device) and is itself the
module to run (no DDP wrapper); every process must take part in every forward (``even_batches``) and in every
gather of a full state dict. Checkpoints and the saved policy hold FULL state dicts gathered on the main process
(in CPU memory), in the one-process layout: a run checkpointed under FSDP resumes on any number of processes, with
or without FSDP, and the reverse.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from training.ml.config import ConfigError

ENV_USE_FSDP, ENV_USE_DEEPSPEED = "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"
CONFIG_FILE = "RLHF_ACCELERATE_CONFIG_FILE"  # = distributed.ENV_CONFIG_FILE (distributed imports this module)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested(accelerator, env: Mapping[str, str] | None = None) -> bool:
    """True when the launch asked for FSDP: accelerate chose it (GPU), or its launcher set ACCELERATE_USE_FSDP
    (any device)."""
    from accelerate.utils import DistributedType

    env = os.environ if env is None else env
    return accelerator.distributed_type == DistributedType.FSDP or _flag(env, ENV_USE_FSDP)


def deepspeed_requested(accelerator, env: Mapping[str, str] | None = None) -> bool:
    from accelerate.utils import DistributedType

    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            or _flag(os.environ if env is None else env, ENV_USE_DEEPSPEED))


def is_sharded(accelerator) -> bool:
    """True in a run of several processes whose launch asked for FSDP (one process has nothing to shard)."""
    return accelerator.num_processes > 1 and fsdp_requested(accelerator)


@dataclass(frozen=True)
class ShardSettings:
    """What the trainers take from the file's ``fsdp_config``; everything else is refused or documented as ignored."""

    wrap_classes: tuple[str, ...] | None = None  # shard each block of these classes (None: _no_split_modules)
    wrap_blocks: bool = True  # TRANSFORMER_BASED_WRAP; False: NO_WRAP (the whole model is one unit)


def settings_from_env() -> ShardSettings:
    """The file's FSDP settings as accelerate's launcher exported them, parsed by accelerate; refuses the rest."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    try:
        plugin = FullyShardedDataParallelPlugin()
    except (ValueError, ImportError) as error:  # accelerate's own validation of the file's values
        raise ConfigError(CONFIG_FILE, f"its fsdp_config is invalid: {error}") from error
    refuse = lambda why: ConfigError(CONFIG_FILE, f"FSDP: {why}")  # noqa: E731
    if plugin.fsdp_version != 2:
        raise refuse(f"fsdp_version {plugin.fsdp_version} is not supported: set fsdp_version: 2 (torch's fully_shard)")
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        raise refuse("fsdp_offload_params: true is not supported (parameter offload to CPU is not implemented or "
                     "verified)")
    if plugin.activation_checkpointing:
        raise refuse('fsdp_activation_checkpointing is not supported: set the run\'s "gradient_checkpointing": true '
                     'instead')
    if plugin.cpu_ram_efficient_loading:
        raise refuse("set fsdp_cpu_ram_efficient_loading: false (accelerate's default is true): the trainers do not "
                     "load on the main process alone; every process loads the whole model into CPU memory, then keeps "
                     "its shard")
    if not plugin.reshard_after_forward:
        raise refuse("fsdp_reshard_after_forward: false (SHARD_GRAD_OP) is not supported: set true. The trainers rely "
                     "on every unit being sharded again after each forward: a forward without backward (evaluation, "
                     "reference log-probs) would otherwise leave it gathered, and the optimizer would see its "
                     "gathered copies")
    if plugin.ignored_modules:
        raise refuse("fsdp_ignored_modules is not supported")
    policy = getattr(plugin.auto_wrap_policy, "__name__", plugin.auto_wrap_policy)
    if policy not in (None, "transformer_auto_wrap_policy"):
        raise refuse(f"fsdp_auto_wrap_policy {policy} is not supported: use TRANSFORMER_BASED_WRAP or NO_WRAP")
    classes = plugin.transformer_cls_names_to_wrap
    return ShardSettings(wrap_classes=tuple(classes) if classes else None, wrap_blocks=policy is not None)


def refuse_unsupported(config, *, health_watch=None, lora: bool = True) -> None:
    """What the sharded trainers do not do (yet): the in-run health check (main-process generation), and LoRA where
    ``lora`` is false (the reward model: its score head is a peft modules_to_save)."""
    if not lora and (getattr(config, "lora_r", 0) or getattr(config, "adapter", "")):
        raise ConfigError("lora_r" if getattr(config, "lora_r", 0) else "adapter",
                          f"LoRA with sharded parameters (FSDP, {CONFIG_FILE}) is not supported by this trainer: train "
                          "the full model, or use a MULTI_GPU config")
    if health_watch is not None and getattr(config, "health_every", 0):
        raise ConfigError("health_every", f"the in-run health check generates on the main process alone, which "
                                          f"sharded parameters (FSDP, {CONFIG_FILE}) do not allow: set 0")


def shard_model(model, accelerator, settings: ShardSettings):
    """Shard ``model`` in place over all processes: each transformer block its own unit, the rest (embeddings, tied
    head, final norm) the root unit; each is gathered just before its forward and freed after it (and again for
    its backward), so outside a forward or backward every parameter is a shard. Returns the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    if settings.wrap_blocks:
        names = set(settings.wrap_classes or getattr(model, "_no_split_modules", None) or ())
        blocks = [m for m in model.modules() if type(m).__name__ in names]
        if not blocks:
            raise ConfigError(CONFIG_FILE, f"FSDP: {type(model).__name__} has no block of class {sorted(names)} to "
                                           f"shard (fsdp_transformer_layer_cls_to_wrap)")
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # The root too (accelerate leaves it gathered until backward): then no forward without backward (evaluation,
    # reference log-probs) leaves gathered tensors where the optimizer or a state dict would take parameters.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


# --- full state dicts: every process calls these together; the main process gets the tensors (on CPU) ---
_FULL = dict(full_state_dict=True, cpu_offload=True)



def full_model_state(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered on the main process in CPU memory ({} on the others); of a peft
    model only its trainable parameters (the adapter, which is all its ``save_pretrained`` keeps). A tied weight
    is kept under its first name only, as ``save_pretrained`` writes it from an unsharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
    options = StateDictOptions(**_FULL, ignore_frozen_params=hasattr(model, "peft_config"))
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if k not in aliases}


def full_states(model, optimizer) -> dict:
    """``checkpoint_save``'s ``model_state`` and ``optimizer_state`` of a sharded run (every process calls it)."""
    return {"model_state": full_model_state(model), "optimizer_state": full_optimizer_state(model, optimizer)}


def is_sharded_module(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole, by name, gathered on the main process in CPU memory ({} on the others)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    full = get_model_state_dict(model, options=StateDictOptions(**_FULL, ignore_frozen_params=True))
    return {k: v for k, v in full.items() if k in trainable}


def load_trainable_from_main(model, state: dict[str, torch.Tensor]) -> None:
    """Load ``full_trainable_state``'s tensors (held by the main process; the others may pass {}) into the sharded
    model: the main process broadcasts them, each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=False))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's state gathered on the main process, in the one-process layout (``optimizer.state_dict()``:
    parameters by index in the optimizer's order), so that any run can resume from it; {} on the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_FULL))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(n for group in by_name["param_groups"] for n in group["params"])}
    return {"state": {index[name]: value for name, value in by_name["state"].items()},
            "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                             for group in by_name["param_groups"]]}


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a one-process optimizer state (every process holds the whole of it) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names_of = {id(p): name for name, p in model.named_parameters()}
    names = [names_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {names[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def load_full_adapter(model, weights: dict[str, torch.Tensor]):
    """Load a saved peft adapter (full tensors, on every process) into the sharded peft model: peft maps the saved
    names to the model's, then its ``load_state_dict`` call is served by ``load_full_state``."""
    from peft import set_peft_model_state_dict

    def load_once(state, strict=True, assign=False):
        del model.load_state_dict  # the class's own again: set_model_state_dict calls it in turn
        return load_full_state(model, state)

    model.load_state_dict = load_once
    try:
        return set_peft_model_state_dict(model, weights)
    finally:
        model.__dict__.pop("load_state_dict", None)


def load_full_state(model, weights: dict[str, torch.Tensor]):
    """Load full tensors (every process holds them all) into the sharded model; returns (missing, unexpected) keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True,
                                                                                   strict=False))


def even_batches(n_items: int, batch_size: int, *, rank: int, world: int, sharded: bool) -> list[tuple[int, bool]]:
    """This process's evaluation batches (start, counted): every ``world``-th from ``rank``. Sharded, every process
    must run as many forwards as the others (each gathers parameters with all of them), so the ones with fewer
    repeat their first batch (or batch 0) uncounted.

    >>> even_batches(5, 2, rank=1, world=2, sharded=False), even_batches(5, 2, rank=1, world=2, sharded=True)
    ([(2, True)], [(2, True), (2, False)])
    """
    starts = list(range(rank * batch_size, n_items, batch_size * world))
    mine = [(start, True) for start in starts]
    if not sharded:
        return mine
    most = -(-(-(-n_items // batch_size)) // world)  # ceil(ceil(n / batch) / world): rank 0's share
    return mine + [(starts[0] if starts else 0, False)] * (most - len(mine))


def grad_norm_value(norm) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor when the gradients are sharded: the same on every process)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
