"""Data parallelism on every device of a worker, through `accelerate`. No Django here.

Launch side (the run supervisor): ``num_processes()`` says how many processes a run gets (one per CUDA
device, or ``RLHF_NUM_PROCESSES``) and ``launch_command()`` builds the command line: plain
``python -m MODULE ARGS`` for one process, ``accelerate launch --multi_gpu --num_processes N -m MODULE ARGS``
for several (torchrun underneath: one process per device, NCCL on CUDA, gloo on CPU). Several machines meet
at machine 0 (``rendezvous_from_env``: RLHF_NUM_MACHINES, RLHF_MACHINE_RANK, RLHF_MAIN_PROCESS_IP/_PORT);
an operator's accelerate config file (RLHF_ACCELERATE_CONFIG_FILE) may replace ``--multi_gpu``; one that selects
FSDP shards the parameters of SFT, DPO and reward runs (``place``, ``training.ml.sharding``); GRPO and PPO refuse it.

Trainer side: every process holds the whole model (DDP), takes its share of each optimizer step's groups
(``shard``), and scales its loss so that DDP's gradient average equals the gradient of the global mean
(``global_mean_scales``): N processes on a batch of B prompts train the same model as one process on it.
Only the main process reports, logs and writes; ``any_process`` shares the main process's "stop now".

>>> launch_command(1, ["training.runner", "7"])[1:]
['-m', 'training.runner', '7']
>>> launch_command(2, ["training.runner", "7"])[1:6]
['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2']
>>> shard([10, 11, 12, 13, 14], rank=1, world=2), shard([10], rank=1, world=2)
(([11, 13], False), ([10], True))
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

ENV_NUM_PROCESSES = "RLHF_NUM_PROCESSES"
ENV_NUM_MACHINES, ENV_MACHINE_RANK = "RLHF_NUM_MACHINES", "RLHF_MACHINE_RANK"
ENV_MAIN_ADDRESS, ENV_MAIN_PORT = "RLHF_MAIN_PROCESS_IP", "RLHF_MAIN_PROCESS_PORT"
ENV_CONFIG_FILE = "RLHF_ACCELERATE_CONFIG_FILE"


def num_processes(*, env: Mapping[str, str] | None = None, device_count: int | None = None) -> int:
    """Processes for one run: ``RLHF_NUM_PROCESSES`` when set, else one per visible CUDA device (at least 1)."""
    env = os.environ if env is None else env
    value = env.get(ENV_NUM_PROCESSES, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_NUM_PROCESSES} must be a whole number >= 1, got {value!r}")
        return int(value)
    return max(1, cuda_device_count() if device_count is None else device_count)


def cuda_device_count() -> int:
    return torch.cuda.device_count()


def process_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank as the launcher (torchrun) set it; 0 when not launched by one."""
    return int((os.environ if env is None else env).get("RANK", "0"))


@dataclass(frozen=True)
class Rendezvous:
    """Where the machines of one run meet (torchrun's static rendezvous, through ``accelerate launch``).

    One machine: a free port on this host. Several: every machine runs the launcher with the same
    ``num_machines``, its own ``machine_rank`` (0 on the machine whose worker claimed the run) and the
    address and port of machine 0, where the processes meet.
    """

    num_machines: int = 1
    machine_rank: int = 0
    main_address: str = ""
    main_port: int = 0

    def launch_args(self) -> list[str]:
        if self.num_machines == 1:
            return ["--num_machines", "1", "--main_process_port", "0"]  # a free port: runs can share a machine
        return ["--num_machines", str(self.num_machines), "--machine_rank", str(self.machine_rank),
                "--main_process_ip", self.main_address, "--main_process_port", str(self.main_port)]


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        raise ValueError(f"{name} must be a whole number in [{low}, {high if high is not None else '∞'}], got {value!r}")
    return int(value)


def rendezvous_from_env(env: Mapping[str, str] | None = None) -> Rendezvous:
    """The worker's multi-machine settings: RLHF_NUM_MACHINES, RLHF_MACHINE_RANK, RLHF_MAIN_PROCESS_IP/_PORT.

    >>> rendezvous_from_env({})
    Rendezvous(num_machines=1, machine_rank=0, main_address='', main_port=0)
    >>> rendezvous_from_env({"RLHF_NUM_MACHINES": "2", "RLHF_MACHINE_RANK": "1", "RLHF_MAIN_PROCESS_IP": "10.0.0.5",
    ...                      "RLHF_MAIN_PROCESS_PORT": "29500"}).launch_args()[:4]
    ['--num_machines', '2', '--machine_rank', '1']
    """
    env = os.environ if env is None else env
    machines = _whole(env, ENV_NUM_MACHINES, 1, 1)
    if machines == 1:
        return Rendezvous()
    rank = _whole(env, ENV_MACHINE_RANK, 0, 0, machines - 1)
    address = env.get(ENV_MAIN_ADDRESS, "").strip()
    port = _whole(env, ENV_MAIN_PORT, 0, 1, 65535)
    if not address or not port:
        raise ValueError(f"{ENV_NUM_MACHINES}={machines} needs {ENV_MAIN_ADDRESS} and {ENV_MAIN_PORT}: the address and "
                         f"a fixed port of machine rank 0, reachable from every machine")
    return Rendezvous(machines, rank, address, port)


def accelerate_config_file(env: Mapping[str, str] | None = None) -> str:
    """The operator's accelerate config file (``RLHF_ACCELERATE_CONFIG_FILE``, e.g. DeepSpeed ZeRO or FSDP), or ""."""
    path = (os.environ if env is None else env).get(ENV_CONFIG_FILE, "").strip()
    if path and not os.path.isfile(path):
        raise ValueError(f"{ENV_CONFIG_FILE}={path!r} is not a file")
    return path


def launch_command(
    num_processes: int, module_args: Sequence[str], *, cuda: bool = True, rendezvous: Rendezvous | None = None,
    config_file: str = "",
) -> list[str]:
    """The command that runs ``python -m <module_args>`` in ``num_processes`` data-parallel processes per machine.

    One process on one machine: exactly ``python -m MODULE ARGS`` (no launcher, nothing added). Otherwise
    ``accelerate launch`` with every setting explicit, so a stray accelerate config file cannot change the run,
    and the rendezvous (a free port on one machine; machine 0's address and port on several). ``cuda=False``
    (tests, CPU-only workers) sets ACCELERATE_USE_CPU=true through ``env``: accelerate then uses gloo on CPU
    ("--cpu" would start only one process). ``config_file`` (the operator's, e.g. DeepSpeed ZeRO or FSDP)
    replaces ``--multi_gpu`` and ``--mixed_precision``: the file chooses the distributed type; the process
    counts and the rendezvous stay explicit.
    """
    rendezvous = rendezvous or Rendezvous()
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not module_args:
        raise ValueError("module_args must name a module to run")
    if num_processes == 1 and rendezvous.num_machines == 1:
        return [sys.executable, "-m", *module_args]
    distributed_type = ["--config_file", config_file] if config_file else ["--multi_gpu"]
    precision = [] if config_file else ["--mixed_precision", "no"]  # the trainers autocast (config mixed_precision)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *distributed_type,
        "--num_processes", str(num_processes * rendezvous.num_machines), *rendezvous.launch_args(),
        *precision, "--dynamo_backend", "no", "-m", *module_args,
    ]
    return command if cuda else ["env", "ACCELERATE_USE_CPU=true", *command]


def shard(indices: Sequence[int], *, rank: int, world: int) -> tuple[list[int], bool]:
    """This process's share of one step's groups: every ``world``-th from ``rank``; a pure function of its inputs.

    Returns (indices, is_padding). A process left without a group (fewer groups than processes, e.g. at the
    end of an epoch) gets the step's first group with ``is_padding=True``: it must still run forward and
    backward (DDP waits for every process), but its loss is scaled by 0.
    """
    mine = list(indices[rank::world])
    if mine:
        return mine, False
    return list(indices[:1]), True


def global_mean_scales(accelerator, *, pair_weight: float, responses: int) -> tuple[float, float]:
    """Factors that turn this process's pair-mean and response-mean losses into its share of the global means.

    DDP averages gradients over W processes, so a process whose pairs carry weight w_r of the step's total
    weight w scales its weighted pair mean by W·w_r/w, and its per-response mean by W·n_r/n: then
    1/W Σ_r scale_r · mean_r = Σ_r (sum_r) / total, the mean one process would take over the whole batch.
    """
    world = accelerator.num_processes
    local = torch.tensor([pair_weight, float(responses)], device=accelerator.device, dtype=torch.float64)
    total = accelerator.reduce(local, reduction="sum")  # (2,)
    weight_total, responses_total = total.tolist()
    return (world * pair_weight / max(weight_total, 1e-12), world * responses / max(responses_total, 1.0))


def any_process(flag: bool, accelerator) -> bool:
    """True on every process when ``flag`` is true on any (e.g. the main process saw a cancel)."""
    if accelerator.num_processes == 1:
        return flag
    local = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(local, reduction="sum").item() > 0)


def sum_over_processes(values: list[float], accelerator) -> list[float]:
    """Element-wise sum of a few numbers over all processes (metrics); the numbers themselves on one process."""
    if accelerator.num_processes == 1:
        return list(values)
    local = torch.tensor(values, device=accelerator.device, dtype=torch.float64)
    return accelerator.reduce(local, reduction="sum").tolist()


def tensor_sum(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """A tensor summed over all processes (a new tensor; the tensor itself on one process)."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.contiguous(), reduction="sum")


def threads_per_process(configured: int, processes: int) -> int:
    """torch CPU threads for one of ``processes`` processes sharing this machine (``configured`` wins if set)."""
    return configured or max(1, (os.cpu_count() or 1) // processes)


def wrap(model, accelerator):
    """The module to run forward/backward through: DDP under several processes, the model itself on one or when
    sharded (``place`` made it an FSDP module, which syncs its own gradients)."""
    from training.ml import sharding

    if accelerator.num_processes == 1 or sharding.is_sharded(accelerator):
        return model
    return accelerator.prepare_model(model)


def sums(values: dict[str, float], accelerator) -> dict[str, float]:
    """``sum_over_processes`` for a dict of numbers (the same keys on every process)."""
    keys = sorted(values)
    return dict(zip(keys, sum_over_processes([float(values[k]) for k in keys], accelerator)))


def weighted_means(values: dict[str, float], weight: float, accelerator) -> tuple[dict[str, float], float]:
    """Means over all processes of per-process means ``values`` weighted by ``weight`` (e.g. pairs); (means, Σ weight)."""
    total = sums({**{k: v * weight for k, v in values.items()}, "\0weight": weight}, accelerator)
    weight_total = total.pop("\0weight")
    return {k: v / max(weight_total, 1e-12) for k, v in total.items()}, weight_total


def make_accelerator(*, shards: bool = False):
    """The trainers' Accelerator: DDP (or one plain process); precision is the run's own (``ml.precision``).

    An operator config file (``RLHF_ACCELERATE_CONFIG_FILE``) may set the launch (GPU ids, machines, NCCL
    and rendezvous options), but its mixed precision is not applied on top of the run's. A file that selects FSDP
    is honoured by the trainers that pass ``shards=True`` (SFT, DPO, reward: ``training.ml.sharding``, its settings
    checked here, before any work) and refused by the others, as DeepSpeed ZeRO is by all: they save and
    checkpoint the whole model from the main process, which sharded parameters would silently break. The
    refusal also holds on CPU, where accelerate itself would quietly run such a file as DDP.
    """
    from accelerate import Accelerator

    from training.ml import sharding
    from training.ml.config import ConfigError

    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state.get("_mixed_precision") not in (None, "no"):
        # Another library in this process (TRL's trainers, in tests or an in-process run) left a precision in
        # accelerate's process-wide state; ours is the run's own (ml.precision), so start from a clean state.
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="no")
    refused = "DEEPSPEED" if sharding.deepspeed_requested(accelerator) else (
        "FSDP" if sharding.fsdp_requested(accelerator) and not shards else "")
    if refused:
        raise ConfigError(ENV_CONFIG_FILE, f"selects {refused}, which this trainer does not support yet (it shards "
                                           f"the data, not the parameters): use a MULTI_GPU config")
    if sharding.is_sharded(accelerator):
        sharding.settings_from_env()  # refuses the file's settings the trainers do not honour, before any work
    return accelerator


def place(model, accelerator):
    """The model on this process's device; sharded (FSDP over several processes), only its shard there."""
    from training.ml import sharding

    if sharding.is_sharded(accelerator):
        return sharding.shard_model(model, accelerator, sharding.settings_from_env())
    return model.to(accelerator.device)
